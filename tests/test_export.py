"""``nsysan export`` / ``nsysan.export``: batch conversion of real nsys reports (nsysan/exporter.py, cli/export.py).

The reports are real: conftest profiles workloads/cpu_nvtx.py once per session with nsys 2023.4 and 2022.4
(``cpu_capture_2023`` / ``cpu_capture_2022``), and the workload writes the NVTX range counts it emitted. Each test
copies those reports into its own folder, converts them, and reads the exports back with ``nsysan.open``: the
range counts must equal the workload's own. Interruptions use a fake, slow nsys (a script passed as ``--nsys``)
that writes a partial file and sleeps, so that it can be interrupted or killed at a known point.
"""
from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import nsysan
from nsysan.cli import app
from nsysan.analyses.latency import range_trace
from nsysan.errors import NsysanError
from nsysan.host import alive
from nsysan.exporter import ExportResult, export, export_problem, output_path, stale_temporaries

CLI = [sys.executable, "-m", "nsysan"]


@dataclass(frozen=True)
class Rep:
    """A real report made this session, the nsys that made it and the range counts the workload emitted."""

    path: Path
    nsys: str
    expected: dict[str, int]


def _rep(capture) -> Rep:
    path = capture.sqlite.with_suffix(".nsys-rep")
    assert path.is_file() and path.stat().st_size > 1000, f"conftest left no report at {path}"
    return Rep(path, capture.nsys, dict(capture.expected))


@pytest.fixture(scope="session")
def rep23(cpu_capture_2023) -> Rep:
    return _rep(cpu_capture_2023)


@pytest.fixture(scope="session")
def rep22(cpu_capture_2022) -> Rep:
    return _rep(cpu_capture_2022)


def place(rep: Rep, dest: Path) -> Path:
    """Copy a report (with a fresh modification time) to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rep.path, dest)
    return dest


def range_counts(export_path: Path) -> dict[str, int]:
    with nsysan.open(export_path) as report:
        trace = range_trace(report)
    return dict(trace.group_by("range").len().iter_rows())


def listing(root: Path) -> list[str]:
    """Every file and folder under ``root`` (not inside parquetdir folders), relative, sorted."""
    out = []
    for path in sorted(root.rglob("*")):
        if not any(parent.name.endswith("_pqtdir") for parent in path.relative_to(root).parents):
            out.append(str(path.relative_to(root)) + ("/" if path.is_dir() else ""))
    return out


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if ".nsysan-" in p.name)




def wait_dead(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


# -- conversion ------------------------------------------------------------------------------------------------

def test_converts_both_types_and_ranges_match_the_workload(rep23: Rep, rep22: Rep, nsys: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    new = place(rep23, runs / "a" / "new.nsys-rep")
    old = place(rep22, runs / "b" / "c" / "old.nsys-rep")  # a 2022.4 report: newer nsys reads older reports
    seen = []
    result = export([runs], types="both", jobs=2, nsys=nsys, progress=lambda *args: seen.append(args))

    assert isinstance(result, ExportResult)
    assert [i.report for i in result.items] == [new, old]
    assert [i.status for i in result.items] == ["converted", "converted"]
    assert result.ok and result.counts["converted"] == 2 and result.kinds == ("sqlite", "parquet")
    assert sorted(item.report for item, _, _ in seen) == [new, old]
    assert [(done, total) for _, done, total in seen] == [(1, 2), (2, 2)]
    assert str(result.nsys.version).startswith("2023.4")
    assert result.items[0].report_version.startswith("2023.4")  # read from the report's header
    for item, rep in ((result.items[0], rep23), (result.items[1], rep22)):
        assert item.converted == ["sqlite", "parquet"]
        assert item.outputs == {"sqlite": item.report.with_suffix(".sqlite"),
                                "parquet": item.report.parent / (item.report.name.removesuffix(".nsys-rep") + "_pqtdir")}
        for out in item.outputs.values():
            assert range_counts(out) == rep.expected, out
    assert listing(runs) == ["a/", "a/new.nsys-rep", "a/new.sqlite", "a/new_pqtdir/", "b/", "b/c/", "b/c/old.nsys-rep",
                             "b/c/old.sqlite", "b/c/old_pqtdir/"]


def test_jobs_2_gives_the_same_result_as_jobs_1(rep23: Rep, rep22: Rep, nsys: str, tmp_path: Path) -> None:
    results = {}
    for jobs in (1, 2):
        runs = tmp_path / f"jobs{jobs}"
        for i in range(3):
            place(rep23, runs / f"run{i}.nsys-rep")
        place(rep22, runs / "sub" / "old.nsys-rep")
        (runs / "bad.nsys-rep").write_bytes(b"")
        result = export([runs], jobs=jobs, nsys=nsys)
        results[jobs] = result
        assert result.counts == {"total": 5, "converted": 4, "up_to_date": 0, "would_convert": 0, "failed": 1}
    one, two = results[1], results[2]
    shape = [(str(i.report.relative_to(tmp_path / "jobs1")), i.status, i.reason) for i in one.items]
    assert shape == [(str(i.report.relative_to(tmp_path / "jobs2")), i.status, i.reason) for i in two.items]
    for a, b in zip(one.items, two.items):
        if a.status == "converted":
            with nsysan.open(a.outputs["sqlite"]) as ra, nsysan.open(b.outputs["sqlite"]) as rb:
                assert range_trace(ra).equals(range_trace(rb))
    assert listing(tmp_path / "jobs1") == listing(tmp_path / "jobs2")


def test_up_to_date_exports_are_skipped_and_force_redoes_them(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    report = place(rep23, tmp_path / "r.nsys-rep")
    sqlite = tmp_path / "r.sqlite"
    assert export([tmp_path], nsys=nsys).items[0].status == "converted"
    before = sqlite.stat()

    again = export([tmp_path], nsys=nsys)
    assert [(i.status, i.up_to_date) for i in again.items] == [("up-to-date", ["sqlite"])]
    assert (sqlite.stat().st_ino, sqlite.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    forced = export([tmp_path], nsys=nsys, force=True)
    assert [(i.status, i.replaced) for i in forced.items] == [("converted", {"sqlite": "--force"})]
    assert sqlite.stat().st_ino != before.st_ino  # a new file was renamed into place
    assert range_counts(sqlite) == rep23.expected

    # An export older than its report (the report was profiled again) is exported again.
    earlier = report.stat().st_mtime - 10
    os.utime(sqlite, (earlier, earlier))
    stale = export([tmp_path], nsys=nsys)
    assert [(i.status, i.replaced) for i in stale.items] == [("converted", {"sqlite": "older than the report"})]
    assert sqlite.stat().st_mtime_ns >= report.stat().st_mtime_ns
    assert listing(tmp_path) == ["r.nsys-rep", "r.sqlite"]


def _break_sqlite(path: Path, how: str) -> str:
    """Damage a real export the way an interrupted or foreign writer would; return what export_problem says."""
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "truncated SQLite file"
    con = sqlite3.connect(path)
    if how == "no metadata":
        con.execute("DROP TABLE META_DATA_EXPORT")
        expected = "no export metadata table"
    else:  # the metadata of a run that never finished: nsys writes EXPORT_TIME last
        con.execute("DELETE FROM META_DATA_EXPORT WHERE name = 'EXPORT_TIME'")
        expected = "the export run did not finish (META_DATA_EXPORT lacks EXPORT_TIME)"
    con.commit()
    con.close()
    return expected


@pytest.mark.parametrize("how", ["truncated", "no metadata", "unfinished", "journal left", "text"])
def test_incomplete_export_newer_than_its_report_is_redone(how: str, rep23: Rep, nsys: str, tmp_path: Path) -> None:
    report = place(rep23, tmp_path / "r.nsys-rep")
    sqlite = tmp_path / "r.sqlite"
    export([report], nsys=nsys)
    assert export_problem(sqlite, "sqlite") is None
    if how == "journal left":
        Path(f"{sqlite}-journal").write_bytes(b"\0" * 512)
        expected = "a writer was interrupted (left r.sqlite-journal)"
    elif how == "text":
        sqlite.write_text("partial")
        expected = "not an SQLite file"
    else:
        expected = _break_sqlite(sqlite, how)
    future = report.stat().st_mtime + 60  # newer than the report: only the content check can catch it
    os.utime(sqlite, (future, future))
    problem = export_problem(sqlite, "sqlite")
    assert problem is not None and problem.startswith(expected)

    result = export([report], nsys=nsys)
    assert [(i.status, i.replaced) for i in result.items] == [("converted", {"sqlite": problem})]
    assert export_problem(sqlite, "sqlite") is None
    assert range_counts(sqlite) == rep23.expected
    # A journal left beside the old export is removed with it: SQLite would "roll back" the new file with it.
    assert listing(tmp_path) == ["r.nsys-rep", "r.sqlite"]


def test_incomplete_parquetdir_is_detected(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    report = place(rep23, tmp_path / "r.nsys-rep")
    folder = tmp_path / "r_pqtdir"
    assert export([report], types="parquet", nsys=nsys).items[0].status == "converted"
    assert export_problem(folder, "parquet") is None
    nvtx = folder / "NVTX_EVENTS.parquet"
    nvtx.write_bytes(nvtx.read_bytes()[:-100])  # cut short, as by a killed writer
    assert export_problem(folder, "parquet") == "NVTX_EVENTS.parquet is not a whole Parquet file"
    result = export([report], types="parquet", nsys=nsys)
    assert result.items[0].status == "converted" and export_problem(folder, "parquet") is None
    assert range_counts(folder) == rep23.expected
    (folder / "META_DATA_EXPORT.parquet").unlink()
    assert export_problem(folder, "parquet").startswith("no export metadata table")
    assert export_problem(tmp_path / "absent_pqtdir", "parquet") == "missing"


def test_dry_run_writes_nothing(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    done = place(rep23, tmp_path / "done.nsys-rep")
    export([done], nsys=nsys)
    todo = place(rep23, tmp_path / "sub" / "todo.nsys-rep")
    (tmp_path / "empty.nsys-rep").write_bytes(b"")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    result = export([tmp_path], nsys=nsys, dry_run=True, out_dir=None)
    assert [(i.report.name, i.status) for i in result.items] == [
        ("done.nsys-rep", "up-to-date"), ("empty.nsys-rep", "failed"), ("todo.nsys-rep", "would-convert")]
    assert result.items[2].planned == ["sqlite"] and result.dry_run
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert not todo.with_suffix(".sqlite").exists()

    out = CliRunner().invoke(app, ["export", str(tmp_path), "--dry-run", "--force", "--nsys", nsys, "-f", "csv"])
    assert out.exit_code == 3, out.stderr
    assert out.stdout.count("would-convert") == 2 and "empty file (0 bytes)" in out.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_out_dir_mirrors_the_input_folders(rep23: Rep, rep22: Rep, nsys: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "gpu0" / "a.nsys-rep")
    place(rep22, runs / "gpu1" / "deep" / "b.nsys-rep")
    single = place(rep23, tmp_path / "elsewhere" / "c.nsys-rep")
    out = tmp_path / "out"
    result = export([runs, single], out_dir=out, nsys=nsys, jobs=2)
    assert result.ok and result.counts["converted"] == 3
    assert listing(out) == ["c.sqlite", "gpu0/", "gpu0/a.sqlite", "gpu1/", "gpu1/deep/", "gpu1/deep/b.sqlite"]
    assert listing(runs) == ["gpu0/", "gpu0/a.nsys-rep", "gpu1/", "gpu1/deep/", "gpu1/deep/b.nsys-rep"]
    assert range_counts(out / "gpu1" / "deep" / "b.sqlite") == rep22.expected
    assert output_path(runs / "gpu0" / "a.nsys-rep", "parquet", root=runs, out_dir=out) == out / "gpu0" / "a_pqtdir"
    # Up to date under --out-dir too.
    assert export([runs, single], out_dir=out, nsys=nsys).counts["up_to_date"] == 3

    # Two inputs that would write the same export: the second fails, the first converts.
    other = tmp_path / "other"
    place(rep23, other / "gpu0" / "a.nsys-rep")
    clash = export([runs, other], out_dir=tmp_path / "out2", nsys=nsys)
    failed = {i.report: i.reason for i in clash.failed}
    assert list(failed) == [other / "gpu0" / "a.nsys-rep"]
    assert failed[other / "gpu0" / "a.nsys-rep"].startswith(f"same output as {runs / 'gpu0' / 'a.nsys-rep'}")


# -- bad inputs ----------------------------------------------------------------------------------------------

def test_bad_inputs_get_one_line_each_and_the_rest_converts(rep23: Rep, rep22: Rep, nsys: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    good = place(rep23, runs / "good.nsys-rep")
    legacy = place(rep22, runs / "old" / "legacy.qdrep")
    (runs / "empty.nsys-rep").write_bytes(b"")
    (runs / "truncated.nsys-rep").write_bytes(rep23.path.read_bytes()[:60_000])
    (runs / "notes.nsys-rep").write_text("TODO: profile the model again\n")
    (runs / "sub").mkdir()
    shutil.copyfile(rep23.path.with_suffix(".sqlite"), runs / "sub" / "exported.nsys-rep")
    summary = tmp_path / "summary.json"
    out = CliRunner().invoke(app, ["export", str(runs), "--nsys", nsys, "-j", "2", "--summary", str(summary)])
    assert out.exit_code == 3, out.stderr
    reasons = {
        "empty.nsys-rep": "empty file (0 bytes): the capture was not written completely; profile again",
        "truncated.nsys-rep": "truncated or damaged report (nsys: Section Table Reference magic number mismatch); "
                              "copy it again or profile again",
        "notes.nsys-rep": "not an nsys report: a text file (starts with 'TODO: profile the model again')",
        "exported.nsys-rep": "already an SQLite export, not an nsys report: read it with nsysan directly",
    }
    data = json.loads(summary.read_text())
    by_name = {Path(i["report"]).name: i for i in data["items"]}
    assert {n: i["reason"] for n, i in by_name.items() if i["status"] == "failed"} == reasons
    assert {n for n, i in by_name.items() if i["status"] == "converted"} == {"good.nsys-rep", "legacy.qdrep"}
    assert data["counts"] == {"total": 6, "converted": 2, "up_to_date": 0, "would_convert": 0, "failed": 4}
    assert data["nsys"]["version"].startswith("2023.4")
    errors = out.stderr.splitlines()
    for name, reason in reasons.items():  # one line each on stderr, naming the file
        assert [line for line in errors if name in line] == [f"nsysan: {by_name[name]['report']}: {reason}"]
    assert "Traceback" not in out.stderr + out.stdout and "exporting reports" not in out.stderr
    assert range_counts(good.with_suffix(".sqlite")) == rep23.expected
    assert range_counts(legacy.with_suffix(".sqlite")) == rep22.expected
    assert temporaries(runs) == []
    assert sorted(p.name for p in runs.rglob("*.sqlite")) == ["good.sqlite", "legacy.sqlite"]


def test_unreadable_report(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "good.nsys-rep")
    locked = place(rep23, runs / "locked.nsys-rep")
    locked.chmod(0)
    command = [*CLI, "export", str(runs), "--nsys", nsys, "--format", "json"]
    if os.geteuid() == 0:
        # root reads chmod-000 files (CAP_DAC_OVERRIDE): run nsysan without the capabilities that allow it.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, which can read a chmod-000 file, and setpriv (util-linux) is not "
                        "installed to drop CAP_DAC_OVERRIDE; only the unreadable-file case is skipped")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
        probe = subprocess.run([*command[:4], "cat", str(locked)], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("running as root and dropping CAP_DAC_OVERRIDE with setpriv did not make a chmod-000 "
                        "file unreadable here; only the unreadable-file case is skipped")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    rows = {Path(r["report"]).name: r for r in json.loads(done.stdout)}
    assert rows["locked.nsys-rep"]["status"] == "failed"
    assert rows["locked.nsys-rep"]["reason"] == "cannot read: permission denied"
    assert rows["good.nsys-rep"]["status"] == "converted"
    assert f"nsysan: {locked}: cannot read: permission denied" in done.stderr.splitlines()
    assert range_counts(runs / "good.sqlite") == rep23.expected
    assert listing(runs) == ["good.nsys-rep", "good.sqlite", "locked.nsys-rep"]


def test_report_newer_than_the_installed_nsys(rep23: Rep, rep22: Rep, nsys_2022: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    new = place(rep23, runs / "new.nsys-rep")
    old = place(rep22, runs / "old.nsys-rep")
    result = export([runs], types="both", nsys=nsys_2022)
    assert result.kinds == ("sqlite",)  # 2022.4 has no parquetdir export: said, not failed
    assert result.notes == [f"nsys {result.nsys.version} has no parquetdir export: wrote SQLite only"]
    assert str(result.nsys.version).startswith("2022.4")
    reason = {i.report: i.reason for i in result.items}
    assert reason[old] is None
    assert reason[new] == (f"report made by nsys {rep23_version(new)}, newer than the nsys {result.nsys.version} used "
                           f"here ({nsys_2022}): export it with nsys >= 2023.4 (--nsys PATH or NSYS=PATH)")
    assert range_counts(old.with_suffix(".sqlite")) == rep22.expected
    assert listing(runs) == ["new.nsys-rep", "old.nsys-rep", "old.sqlite"]

    with pytest.raises(NsysanError, match=r"cannot export parquetdir .*use --type sqlite"):
        export([runs], types="parquet", nsys=nsys_2022)
    out = CliRunner().invoke(app, ["export", str(new), "--nsys", nsys_2022])
    assert out.exit_code == 1 and "newer than the nsys 2022.4" in out.stderr


def rep23_version(report: Path) -> str:
    """The version written in a 2023+ report's first line, read independently of nsysan."""
    first = report.read_bytes()[:200].split(b"\n")[0].decode()
    assert first.startswith("NVIDIA Tegra Profiler Report 2023@4@")
    return first.removeprefix("NVIDIA Tegra Profiler Report ").rstrip(".").replace("@", ".")


def test_usage_errors(tmp_path: Path, nsys: str) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["export", str(tmp_path), "--nsys", nsys])
    assert empty.exit_code == 1 and f"no .nsys-rep or .qdrep reports found under {tmp_path}" in empty.stderr
    (tmp_path / "x.nsys-rep").write_bytes(b"")
    bad_type = runner.invoke(app, ["export", str(tmp_path), "--type", "hdf", "--nsys", nsys])
    assert bad_type.exit_code == 1 and "--type must be one of sqlite, parquet, both" in bad_type.stderr
    no_nsys = runner.invoke(app, ["export", str(tmp_path), "--nsys", str(tmp_path / "missing")])
    assert no_nsys.exit_code == 1 and "no such file" in no_nsys.stderr
    assert runner.invoke(app, ["export", str(tmp_path), "--jobs", "0"]).exit_code == 2
    assert runner.invoke(app, ["export"]).exit_code == 2


# -- interruptions (a fake, slow nsys) ------------------------------------------------------------------------

SLOW_NSYS = """#!{python}
import os, sqlite3, sys, time
args = sys.argv[1:]
if args[:1] == ["--version"]:
    print("NVIDIA Nsight Systems version 2023.4.4.54-fake")
    sys.exit(0)
if args[:2] == ["export", "--help"]:
    print("  -t, --type=\\n\\n      Possible values are: sqlite, arrow, and parquetdir.\\n")
    sys.exit(0)
out = args[args.index("--output") + 1]
con = sqlite3.connect(out)  # a partial export, as nsys leaves while it writes: tables, no metadata yet
con.execute("CREATE TABLE StringIds (id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL)")
con.commit()
con.close()
pidfile = os.environ["FAKE_NSYS_PIDFILE"]
with open(pidfile + ".part", "w") as f:
    f.write(str(os.getpid()))
os.replace(pidfile + ".part", pidfile)
time.sleep(float(os.environ.get("FAKE_NSYS_SLEEP", "60")))
"""


@pytest.fixture
def slow_nsys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake" / "nsys"
    script.parent.mkdir()
    script.write_text(SLOW_NSYS.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_NSYS_PIDFILE", str(tmp_path / "fake" / "nsys.pid"))
    return script


def start_export(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "export", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_nsys(proc: subprocess.Popen, pidfile: Path, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while not pidfile.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"nsysan exited ({proc.returncode}) before the fake nsys started:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the fake nsys did not start")
        time.sleep(0.05)
    return int(pidfile.read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_stops_nsys_and_leaves_no_partial_export(sig: signal.Signals, rep23: Rep, slow_nsys: Path,
                                                           tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    proc = start_export([str(runs), "--nsys", str(slow_nsys), "--summary", str(tmp_path / "s.json")])
    nsys_pid = wait_for_nsys(proc, slow_nsys.with_name("nsys.pid"))
    assert [p.name for p in temporaries(runs)] and all(p.name.startswith("a.sqlite.nsysan-") for p in temporaries(runs))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "nsysan: interrupted: stopped nsys and removed the partial exports" in err
    assert "Traceback" not in err
    assert wait_dead(nsys_pid), "nsys outlived the interrupted nsysan"
    assert listing(runs) == ["a.nsys-rep"]
    assert not (tmp_path / "s.json").exists()


def test_killed_nsys_fails_cleanly_and_is_redone_next_run(rep23: Rep, slow_nsys: Path, nsys: str,
                                                          tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    proc = start_export([str(runs), "--nsys", str(slow_nsys)])
    nsys_pid = wait_for_nsys(proc, slow_nsys.with_name("nsys.pid"))
    os.kill(nsys_pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert f"nsysan: {runs / 'a.nsys-rep'}: nsys export was killed by SIGKILL before it finished" in err.splitlines()
    assert listing(runs) == ["a.nsys-rep"]

    result = export([runs], nsys=nsys)
    assert [i.status for i in result.items] == ["converted"]
    assert range_counts(runs / "a.sqlite") == rep23.expected


def test_sigkilled_nsysan_leaves_a_temporary_that_the_next_run_removes(rep23: Rep, slow_nsys: Path, nsys: str,
                                                                        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    proc = start_export([str(runs), "--nsys", str(slow_nsys)])
    nsys_pid = wait_for_nsys(proc, slow_nsys.with_name("nsys.pid"))
    proc.kill()  # SIGKILL: nsysan can clean nothing up
    proc.communicate(timeout=30)
    os.kill(nsys_pid, signal.SIGKILL)  # the orphaned nsys (in its own session) would go on writing
    assert wait_dead(nsys_pid)
    left = temporaries(runs)
    assert len(left) == 1 and left[0].name.startswith(f"a.sqlite.nsysan-{proc.pid}-")
    assert stale_temporaries(runs / "a.sqlite") == left
    # A temporary of a live nsysan (another process) is left alone.
    other = subprocess.Popen(["sleep", "60"])
    try:
        live = runs / f"a.sqlite.nsysan-{other.pid}-0123abcd.tmp"
        live.write_bytes(b"in progress")

        planned = export([runs], nsys=nsys, dry_run=True)
        assert planned.items[0].status == "would-convert" and planned.stale_removed == left
        assert left[0].exists()  # a dry run removes nothing

        result = export([runs], nsys=nsys)
        assert [i.status for i in result.items] == ["converted"] and result.stale_removed == left
        assert listing(runs) == ["a.nsys-rep", "a.sqlite", live.name]
        assert range_counts(runs / "a.sqlite") == rep23.expected
    finally:
        other.kill()
        other.wait()


def test_timeout_and_unusable_output(rep23: Rep, slow_nsys: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    start = time.monotonic()
    result = export([runs], nsys=slow_nsys, timeout=1)
    assert time.monotonic() - start < 20
    assert [i.reason for i in result.items] == ["nsys export timed out after 1 s and was stopped (raise --timeout)"]
    assert wait_dead(int(slow_nsys.with_name("nsys.pid").read_text()))
    assert listing(runs) == ["a.nsys-rep"]

    # An nsys that says it succeeded but wrote a broken file: checked, not published.
    monkeypatch.setenv("FAKE_NSYS_SLEEP", "0")
    result = export([runs], nsys=slow_nsys)
    assert [i.reason for i in result.items] == ["nsys export wrote an unusable export: no export metadata table "
                                                "(META_DATA_EXPORT): nsys did not finish writing it"]
    assert listing(runs) == ["a.nsys-rep"]


def test_progress_bar_on_a_terminal(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    (runs / "b.nsys-rep").write_bytes(b"")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([*CLI, "export", str(runs), "--nsys", nsys, "-f", "csv"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=secondary, env={**os.environ, "COLUMNS": "150"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    stdout = proc.communicate(timeout=60)[0].decode()
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 3
    assert "exporting reports" in terminal and "2/2" in terminal and "1 failed" in terminal
    assert "exporting reports" not in stdout and stdout.startswith("report,status")


def test_public_api() -> None:
    """nsysan.export is the library entry point (registered in nsysan/__init__.py)."""
    from nsysan import export as public

    assert callable(public) and public.__module__ == "nsysan.exporter"
    assert nsysan.ExportResult is ExportResult


# -- without the analysis packages -----------------------------------------------------------------------------

def test_export_runs_without_duckdb_and_polars(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    """The GPU machine has only the runner's packages: the exporter and its command must not need the analyses'."""
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    summary = tmp_path / "summary.json"
    code = ("import sys\n"
            "sys.modules['duckdb'] = None\n"
            "sys.modules['polars'] = None\n"
            "import nsysan.exporter, nsysan.export_batch\n"
            "from nsysan.cli import main\n"
            f"sys.argv = ['nsysan', 'export', {str(runs)!r}, '--nsys', {nsys!r}, '--summary', {str(summary)!r}]\n"
            "main()\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert ran.returncode == 0, ran.stderr
    assert "a.nsys-rep" in ran.stdout and "converted" in ran.stdout
    assert json.loads(summary.read_text())["counts"]["converted"] == 1
    assert range_counts(runs / "a.sqlite") == rep23.expected


# -- on a Dask cluster (--scheduler) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed") if os.environ.get("CI") != "true" else __import__("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as made:
        yield made


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def batch_folder(root: Path, rep23: Rep, rep22: Rep, stale_pid: int) -> Path:
    """Reports of every outcome: converted (two nsys releases), failed (empty), clashing, and a stale temporary."""
    for i in range(2):
        place(rep23, root / f"run{i}.nsys-rep")
    place(rep22, root / "sub" / "old.nsys-rep")
    place(rep23, root / "sub" / "old.qdrep")  # the same outputs as old.nsys-rep
    (root / "empty.nsys-rep").write_bytes(b"")
    (root / f"run0.sqlite.nsysan-{stale_pid}-0123abcd.tmp").write_bytes(b"left by a SIGKILLed run")
    return root


def without_timings(summary: dict, root: Path) -> dict:
    """A summary with its timings left out and its paths relative to ``root``, to compare two batches."""
    text = json.dumps(summary).replace(str(root), "ROOT")
    found = json.loads(text)
    found.pop("seconds")
    for item in found["items"]:
        item.pop("seconds")
    return found


def table_rows(export_path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{export_path}?mode=ro", uri=True) as con:
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_a_dask_cluster_gives_what_jobs_1_gives(cluster, rep23: Rep, rep22: Rep, nsys: str, tmp_path: Path) -> None:
    stale_pid = dead_pid()
    results, seen = {}, {}
    for where, settings in (("local", {"jobs": 1}), ("dask", {"scheduler": cluster.scheduler_address})):
        runs = batch_folder(tmp_path / where, rep23, rep22, stale_pid)
        seen[where] = []
        results[where] = export([runs], types="both", nsys=nsys, **settings,
                                progress=lambda item, done, total, into=seen[where]: into.append((item, done, total)))
    local, dask = results["local"], results["dask"]
    assert local.counts == {"total": 5, "converted": 3, "up_to_date": 0, "would_convert": 0, "failed": 2}
    assert local.stale_removed == [tmp_path / "local" / f"run0.sqlite.nsysan-{stale_pid}-0123abcd.tmp"]
    assert without_timings(dask.to_dict(), tmp_path / "dask") == without_timings(local.to_dict(), tmp_path / "local")
    assert [(done, total) for _, done, total in seen["dask"]] == [(n, 5) for n in range(1, 6)]
    assert sorted(str(i.report) for i, _, _ in seen["dask"]) == sorted(str(i.report) for i in dask.items)
    assert listing(tmp_path / "dask") == listing(tmp_path / "local")
    for a, b in zip(local.converted, dask.converted):
        assert table_rows(b.outputs["sqlite"]) == table_rows(a.outputs["sqlite"])
        assert sorted(p.name for p in b.outputs["parquet"].iterdir()) == sorted(
            p.name for p in a.outputs["parquet"].iterdir())
    assert range_counts(tmp_path / "dask" / "sub" / "old.sqlite") == rep22.expected


def test_the_command_line_on_a_dask_cluster(cluster, rep23: Rep, nsys: str, tmp_path: Path) -> None:
    outcome = {}
    for where, options in (("local", ["--jobs", "1"]), ("dask", ["--scheduler", cluster.scheduler_address])):
        runs = tmp_path / where
        place(rep23, runs / "a.nsys-rep")
        (runs / "b.nsys-rep").write_bytes(b"")
        ran = CliRunner().invoke(app, ["export", str(runs), "--nsys", nsys, "-f", "json", *options,
                                       "--summary", str(tmp_path / f"{where}.json")])
        assert ran.exit_code == 3, ran.stderr
        rows = json.loads(ran.stdout.replace(str(runs), "ROOT"))
        outcome[where] = ([{k: v for k, v in row.items() if k != "seconds"} for row in rows],
                          without_timings(json.loads((tmp_path / f"{where}.json").read_text()), runs))
    assert outcome["dask"] == outcome["local"]
    assert [row["status"] for row in outcome["dask"][0]] == ["converted", "failed"]


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    summary = tmp_path / "summary.json"
    # Nothing listens on the discard port.
    ran = CliRunner().invoke(app, ["export", str(runs), "--nsys", nsys, "--scheduler", "tcp://127.0.0.1:9",
                                   "--summary", str(summary)])
    assert ran.exit_code == 1 and ran.stdout == ""
    assert len(ran.stderr.splitlines()) == 1
    assert ran.stderr.startswith("nsysan: cannot reach the Dask scheduler at tcp://127.0.0.1:9 (")
    assert listing(runs) == ["a.nsys-rep"] and not summary.exists()
    with pytest.raises(NsysanError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        export([runs], nsys=nsys, scheduler="tcp://127.0.0.1:9")


def test_a_scheduler_without_dask_installed_is_one_line(rep23: Rep, nsys: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    place(rep23, runs / "a.nsys-rep")
    code = ("import sys\n"
            "sys.modules['distributed'] = None\n"
            "from nsysan.cli import main\n"
            f"sys.argv = ['nsysan', 'export', {str(runs)!r}, '--nsys', {nsys!r}, '--scheduler', 'tcp://127.0.0.1:9']\n"
            "main()\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert ran.returncode == 1
    assert ran.stderr.strip() == "nsysan: --scheduler needs Dask distributed: pip install 'nsysan[dask]'"
    assert listing(runs) == ["a.nsys-rep"]
