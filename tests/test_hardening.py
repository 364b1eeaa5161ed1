"""One test per defect the independent campaign reported (issue "442 bad inputs"), on small hand-built or real
exports: inputs are never harmed, every failure is one line and the batch goes on, damage that changes numbers
is detected, sidecars and versions are validated. The campaign itself is tests/test_campaign.py."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import nsysan
from builders import MAIN_TID, ExportBuilder
from nsysan import engine, export_batch, quality
from nsysan.cli import app
from nsysan.export_check import export_problem
from nsysan.files import printable, sqlite_uri

REAL = Path(__file__).parent / "fixtures" / "gpu_run" / "pipeline_gpu0_numa0_vit32x2x256.sqlite"
CLI = [sys.executable, "-m", "nsysan"]
K, M, N, R = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "NVTX_EVENTS",
              "CUPTI_ACTIVITY_KIND_RUNTIME")


def run(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr, result.stderr
    assert all(line.startswith("nsysan: ") for line in result.stderr.splitlines()), result.stderr
    return result


def lines_about(result, path: Path) -> list[str]:
    return [line for line in result.stderr.splitlines() if printable(str(path)) in line]


def build(path: Path, *, kernels: int = 3) -> Path:
    b = ExportBuilder()
    for i in range(kernels):
        t0 = 1000 * i
        b.range(f"batch_{i}", t0, t0 + 900)
        b.range("forward", t0 + 100, t0 + 600)
        b.launch(MAIN_TID, t0 + 150, t0 + 160, t0 + 200, t0 + 400, name="gemm")
        b.launch(MAIN_TID, t0 + 650, t0 + 660, t0 + 700, t0 + 800, kind="memcpy")
    return b.write(path)


def damaged(source: Path, dest: Path, *statements: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    con = sqlite3.connect(dest)
    for statement in statements:
        con.executescript(statement)
    con.commit()
    con.close()
    return dest


def loosen(table: str) -> str:
    return (f'CREATE TABLE "_{table}" AS SELECT * FROM "{table}"; DROP TABLE "{table}"; '
            f'ALTER TABLE "_{table}" RENAME TO "{table}";')


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- 1. inputs are never harmed ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a?b", "a#b", "a%41b", "a%2Fb", "a b", "é?#%"])
def test_odd_names_open_read_only_and_create_nothing(tmp_path: Path, name: str) -> None:
    folder = tmp_path / f"dir{name}"
    export = folder / f"run{name}.sqlite"
    folder.mkdir()
    shutil.copyfile(REAL, export)
    before = listing(tmp_path)
    with nsysan.open(export) as report:
        assert report.table("kernels").height == 465
    assert export_problem(export, "sqlite") is None  # the exporter's completeness check too
    result = run("kernels", export, "-f", "csv")
    assert result.exit_code == 0 and result.stderr == ""
    assert listing(tmp_path) == before  # nothing beside the export, nothing in its parent folder


def test_sqlite_uri_escapes_every_special_character() -> None:
    uri = sqlite_uri("/tmp/a?b#c%41 d/x.sqlite")
    assert uri == "file:///tmp/a%3Fb%23c%2541%20d/x.sqlite?mode=ro&immutable=1"


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "../path"])
def test_output_onto_an_input_under_any_name_is_refused(tmp_path: Path, how: str) -> None:
    export = build(tmp_path / "in" / "run.sqlite")
    target = {"same path": lambda: export, "../path": lambda: tmp_path / "in" / ".." / "in" / "run.sqlite",
              "symlink": lambda: (tmp_path / "link.csv").symlink_to(export) or tmp_path / "link.csv",
              "hard link": lambda: os.link(export, tmp_path / "hard.csv") or tmp_path / "hard.csv"}[how]()
    data = export.read_bytes()
    result = run("kernels", export, "-o", target)
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "input" in result.stderr
    assert export.read_bytes() == data


def test_output_onto_a_fifo_never_blocks(tmp_path: Path) -> None:
    export = build(tmp_path / "run.sqlite")
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    done = subprocess.run([*CLI, "kernels", str(export), "-o", str(fifo)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert fifo.is_file() and "gemm" in fifo.read_text()  # the name now holds the result; nothing waited


def test_wal_mode_and_hot_journal_are_refused_without_touching_the_folder(tmp_path: Path) -> None:
    wal = damaged(REAL, tmp_path / "wal" / "run.sqlite", "PRAGMA journal_mode=WAL;")
    journal = damaged(REAL, tmp_path / "journal" / "run.sqlite")
    Path(f"{journal}-journal").write_bytes(bytes.fromhex("d9d505f920a163d7") + bytes(504))
    before = listing(tmp_path)
    result = run("info", wal, journal, "-f", "csv")
    assert result.exit_code == 1
    assert "WAL mode" in lines_about(result, wal)[0]
    assert "interrupted writer" in lines_about(result, journal)[0]
    assert listing(tmp_path) == before


# -- 2. every failure is one line and the batch goes on ------------------------------------------------------
def test_damage_found_at_query_time_fails_that_report_only(tmp_path: Path, cpu_capture_2023) -> None:
    good = build(tmp_path / "good.sqlite")
    text = damaged(REAL, tmp_path / "text" / "run.sqlite", f"UPDATE \"{K}\" SET start = 'soon' WHERE rowid = 3;")
    page = tmp_path / "page" / "run.sqlite"
    page.parent.mkdir()
    con = sqlite3.connect(REAL)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (R,)).fetchone()[0]
    con.close()
    data = bytearray(REAL.read_bytes())
    start = (root - 1) * 4096 + 8
    data[start:start + 2000] = bytes(b ^ 0xFF for b in data[start:start + 2000])
    page.write_bytes(bytes(data))
    parquet = tmp_path / "pq" / "cpu_pqtdir"
    shutil.copytree(cpu_capture_2023.parquetdir, parquet)
    nvtx = parquet / "NVTX_EVENTS.parquet"
    raw = bytearray(nvtx.read_bytes())
    raw[-200:-140] = bytes(b ^ 0xFF for b in raw[-200:-140])  # the footer: its schema and page locations
    nvtx.write_bytes(bytes(raw))
    result = run("latency", good, text, page, parquet, "-f", "csv")
    assert result.exit_code == 3
    assert pl.read_csv(result.stdout.encode())["report"].unique().to_list() == ["good"]
    for bad in (text, page, parquet):
        assert len(lines_about(result, bad)) == 1, result.stderr
    assert "3 of 4 input(s) failed; 1 analysed" in result.stderr


def test_engine_turns_read_errors_into_failures_but_not_bugs(tmp_path: Path) -> None:
    export = build(tmp_path / "run.sqlite")
    import duckdb

    def damaged_read(report):
        raise duckdb.IOException("IO Error: Could not read page 7\nmore detail")

    result = engine.pooled([export], damaged_read, by=())
    assert not result.ok and result.failures[0].reason == (
        f"{export}: cannot read the export (IO Error: Could not read page 7); it may be damaged: export it again")

    def bug(report):
        raise AttributeError("a bug must stay visible")

    with pytest.raises(AttributeError):
        engine.pooled([export], bug, by=())


def test_a_fifo_named_like_an_export_is_refused_at_once(tmp_path: Path) -> None:
    good = build(tmp_path / "good.sqlite")
    fifo = tmp_path / "blocked.sqlite"
    os.mkfifo(fifo)
    started = time.monotonic()
    done = subprocess.run([*CLI, "latency", str(good), str(fifo), "-f", "csv"], capture_output=True, text=True,
                          timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 3
    assert f"nsysan: {fifo}: a FIFO (named pipe), not an export file or parquetdir folder" in done.stderr
    # In a folder too: found, and refused in one line, not skipped without a word.
    assert "a FIFO" in "".join(lines_about(run("info", tmp_path, "-f", "csv"), fifo))


def test_export_refuses_fifos_loops_and_special_reports_in_one_line(tmp_path: Path, nsys: str) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    os.mkfifo(runs / "fifo.nsys-rep")
    os.symlink("loop.nsys-rep", runs / "loop.nsys-rep")
    os.symlink("/dev/zero", runs / "zero.nsys-rep")
    done = subprocess.run([*CLI, "export", str(runs), str(runs / "loop.nsys-rep"), "--nsys", nsys],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = done.stderr.splitlines()
    assert f"nsysan: {runs / 'fifo.nsys-rep'}: a FIFO (named pipe), not a report file" in errors
    assert f"nsysan: {runs / 'loop.nsys-rep'}: a symbolic link loop" in errors
    assert f"nsysan: {runs / 'zero.nsys-rep'}: a character device, not a report file" in errors
    assert sorted(p.name for p in runs.iterdir()) == ["fifo.nsys-rep", "loop.nsys-rep", "zero.nsys-rep"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["int", "term", "hup"])
def test_an_interrupted_export_stops_waiting_for_a_stuck_worker(tmp_path: Path, sig: signal.Signals) -> None:
    """A worker stuck for ever (as one blocked on a FIFO was): the signal is answered, temporaries removed."""
    (tmp_path / "a.nsys-rep").write_bytes(b"NVIDIA Tegra Profiler Report 2023@4@4\n")
    fake = tmp_path / "nsys"
    fake.write_text(f"#!{sys.executable}\nprint('NVIDIA Nsight Systems version 2023.4.4.54-fake')\n")
    fake.chmod(0o755)
    code = ("import sys, time, nsysan.export_batch as e\n"
            "e.STOP_WAIT_S = 1.0\n"
            "e.inspect_report = lambda report: time.sleep(3600)\n"
            "from nsysan.cli import main\n"
            f"sys.argv = ['nsysan', 'export', {str(tmp_path)!r}, '--nsys', {str(fake)!r}]\n"
            "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    time.sleep(3)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("nsysan export did not answer the signal while a worker was stuck")
    assert proc.returncode in (130, -sig), err
    assert "Traceback" not in err


def test_stop_waits_a_bounded_time_and_never_ignores_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures
    import threading

    monkeypatch.setattr(export_batch, "STOP_WAIT_S", 0.3)
    release = threading.Event()
    pool = export_batch._Workers(1, "test")
    stuck = pool.submit(release.wait)
    batch = export_batch._Batch(None, ("sqlite",), force=False, dry_run=False, timeout=None)
    handlers = []
    monkeypatch.setattr(export_batch, "wait", lambda fs, timeout: handlers.append(signal.getsignal(signal.SIGINT))
                        or concurrent.futures.wait(fs, timeout=timeout))
    started = time.monotonic()
    export_batch._stop(batch, pool, {stuck})
    assert time.monotonic() - started < 5
    assert handlers and handlers[0] is not signal.SIG_IGN
    release.set()


def test_an_empty_folder_in_a_batch_is_reported(tmp_path: Path) -> None:
    good = build(tmp_path / "good.sqlite")
    (tmp_path / "empty").mkdir()
    result = run("info", good, tmp_path / "empty", "-f", "csv")
    assert result.exit_code == 3
    assert lines_about(result, tmp_path / "empty") == [
        f"nsysan: {tmp_path / 'empty'}: no nsys exports in this folder (no .sqlite files, and no .parquet tables "
        "of a parquetdir export)"]


def test_messages_stay_on_one_line_whatever_the_file_name(tmp_path: Path) -> None:
    bad = tmp_path / "two\nlines.sqlite"
    bad.write_text("not a database")
    result = run("info", bad)
    assert result.stderr.splitlines() == [f"nsysan: {tmp_path}/two\\nlines.sqlite: not an SQLite file (turn .nsys-rep "
                                          "reports into SQLite with `nsys export --type sqlite`)"]


# -- 3. damage that changes numbers is detected ----------------------------------------------------------------
@pytest.mark.parametrize(("table", "column", "why"), [
    (M, "bytes", "copy sizes and bandwidth"), (K, "end", "kernel end times"), (K, "demangledName", "kernel names"),
    (N, "end", "range end times"), (R, "correlationId", "which GPU ops each CUDA call launched")])
def test_a_missing_column_fails_with_table_column_and_purpose(tmp_path: Path, table: str, column: str,
                                                              why: str) -> None:
    export = damaged(REAL, tmp_path / "run.sqlite", f'ALTER TABLE "{table}" DROP COLUMN "{column}";')
    command = {M: "bandwidth", K: "kernels", N: "latency", R: "latency"}[table]
    result = run(command, export, "-f", "csv")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"nsysan: {export}: {table} has no column {column}: {why} cannot be "
                                          "computed (a damaged or unsupported export; export it again)"]


def test_reversed_null_and_duplicated_kernels_are_left_out_with_a_count(tmp_path: Path) -> None:
    export = damaged(REAL, tmp_path / "run.sqlite", loosen(K),
                     f'UPDATE "{K}" SET start = "end", "end" = start WHERE rowid IN (1, 2);',
                     f'UPDATE "{K}" SET "end" = NULL WHERE rowid = 3;',
                     f'INSERT INTO "{K}" SELECT * FROM "{K}" WHERE rowid IN (10, 11, 12, 13);')
    result = nsysan.kernels([export], select=nsysan.Selection.everything())
    assert result.notes == (f"{export}: {K}: 7 of 469 kernels left out (1 with NULL in end, 2 ending before they "
                            "start, 4 duplicated)",)
    assert (result.frame["total_ns"] > 0).all()
    clean = nsysan.kernels([REAL], select=nsysan.Selection.everything()).frame
    assert result.frame["instances"].sum() == clean["instances"].sum() - 3
    share = nsysan.top_kernels([export], window="capture", top=0).frame["busy_share_pct"].sum()
    assert share <= 100.0 + 1e-9  # duplicates no longer count twice (the campaign saw 150 %)


def test_absurd_times_do_not_stretch_the_capture(tmp_path: Path) -> None:
    export = damaged(REAL, tmp_path / "run.sqlite", f'UPDATE "{K}" SET "end" = "end" + 10000000000000000 WHERE rowid = 9;')
    clean = nsysan.utilization([REAL]).frame["utilization_pct"][0]
    result = nsysan.utilization([export])
    assert result.notes == (f"{export}: {K}: 1 of 465 kernels left out (1 outside the capture)",)
    assert abs(result.frame["utilization_pct"][0] - clean) < 0.05 * clean


def test_ranges_that_never_ended_are_said_and_all_of_them_fail(tmp_path: Path) -> None:
    some = damaged(REAL, tmp_path / "some.sqlite", loosen(N), f'UPDATE "{N}" SET "end" = NULL WHERE rowid = 5;')
    every = damaged(REAL, tmp_path / "every.sqlite", loosen(N), f'UPDATE "{N}" SET "end" = NULL;')
    result = nsysan.latency([some, every])
    assert [f.path for f in result.failures] == [every]
    assert "75 of 75 NVTX ranges have no end time" in result.failures[0].reason
    assert result.notes == (f"{some}: 1 of 75 NVTX ranges never ended: they are taken to end at the last NVTX "
                            "timestamp of the capture",)


def test_unnamed_kernels_are_not_pooled_into_one_silent_row(tmp_path: Path) -> None:
    no_strings = damaged(REAL, tmp_path / "nostrings.sqlite", "DROP TABLE StringIds;")
    result = nsysan.kernels([no_strings])
    assert not result.ok and "none of the 465 kernels has a name in StringIds" in result.failures[0].reason
    some = damaged(REAL, tmp_path / "some.sqlite", f'UPDATE "{K}" SET demangledName = 999999 WHERE rowid <= 2;')
    assert nsysan.kernels([some]).notes == (
        f"{some}: 2 of 465 kernels have no name in StringIds ({K}.demangledName): they are shown without a name",)


def test_a_lost_kernel_table_is_not_a_projection_of_copies(tmp_path: Path) -> None:
    for how in (f'DROP TABLE "{K}";', f'DELETE FROM "{K}";'):
        export = damaged(REAL, tmp_path / "run.sqlite", how)
        result = nsysan.latency([export])
        assert not result.ok, how
        assert "although the CUDA trace records 465 kernel launches" in result.failures[0].reason
        assert not nsysan.utilization([export]).ok
        (tmp_path / "run.sqlite").unlink()


def test_ops_without_their_cuda_calls_are_counted(tmp_path: Path) -> None:
    export = damaged(REAL, tmp_path / "run.sqlite", loosen(R),
                     f'UPDATE "{R}" SET correlationId = NULL WHERE correlationId IN '
                     f'(SELECT correlationId FROM "{K}" LIMIT 5);')
    result = nsysan.latency([export])
    assert any("5 without a launching CUDA call" in n for n in result.notes), result.notes


def test_a_zero_kernel_export_says_so(tmp_path: Path) -> None:
    b = ExportBuilder()
    b.range("step", 0, 100)
    b.launch(MAIN_TID, 10, 20, 30, 40, kind="memcpy")
    export = b.write(tmp_path / "copies_only.sqlite")
    result = run("kernels", export, "-f", "csv")
    assert result.exit_code == 1 and result.stdout == ""
    assert "no CUDA kernels" in result.stderr
    emptied = damaged(REAL, tmp_path / "emptied.sqlite", f'DELETE FROM "{K}";')
    assert "an empty CUPTI_ACTIVITY_KIND_KERNEL table although the CUDA trace records 465 kernel launches" in \
        run("kernels", emptied).stderr


def test_warm_up_exclusion_that_cannot_be_applied_is_said(tmp_path: Path) -> None:
    export = damaged(REAL, tmp_path / "run.sqlite", f'DROP TABLE "{N}";')
    result = nsysan.kernels([export])
    assert result.notes == (f"{export}: GPU work launched inside warmup_* cannot be left out: the capture traced "
                            "NVTX (META_DATA_CAPTURE) but the export holds no NVTX ranges (--all-instances keeps "
                            "everything without this warning)",)
    assert nsysan.kernels([export], select=nsysan.Selection.everything()).notes == ()
    untied = damaged(REAL, tmp_path / "untied.sqlite", f'DROP TABLE "{R}";')
    assert any("no CUDA API trace" in note for note in nsysan.kernels([untied]).notes)
    # A program without NVTX ranges (and no record that NVTX was traced) has no warm-up: nothing to say.
    b = ExportBuilder()
    b.launch(MAIN_TID, 0, 10, 20, 30, name="gemm")
    assert nsysan.kernels([b.write(tmp_path / "no_nvtx.sqlite")]).notes == ()


def test_checks_read_the_largest_tables_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency on a report: the kernel and CUDA API tables are read by the launches join only (their rows are
    checked on its result), never scanned by a check of their own, so the big-report path stays as fast."""
    checked = []
    check_rows = quality._check_rows
    monkeypatch.setattr(quality, "_check_rows", lambda report, table: checked.append(table) or
                        check_rows(report, table))
    assert nsysan.latency([REAL]).ok
    assert N in checked and K not in checked and R not in checked


# -- 4. validated metadata -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "shown"), [('"ten"', '"ten"'), ("-5", "-5"), ("2.5", "2.5"), ("true", "true"),
                                              ('"10"', '"10"'), ("0", "0")])
def test_a_wrongly_typed_batch_size_fails_in_one_line(tmp_path: Path, value: str, shown: str) -> None:
    export = build(tmp_path / "run.sqlite")
    sidecar = tmp_path / "run.meta.json"
    sidecar.write_text(f'{{"batch_size": {value}}}')
    result = run("throughput", export, "-f", "csv")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"nsysan: {sidecar}: batch_size must be a positive integer, not {shown}"]


def test_sidecars_that_are_not_files_are_refused_without_reading_them(tmp_path: Path) -> None:
    export = build(tmp_path / "run.sqlite")
    os.mkfifo(tmp_path / "run.meta.json")
    result = run("info", export)
    assert result.stderr.splitlines() == [
        f"nsysan: {tmp_path / 'run.meta.json'}: unreadable metadata sidecar (a FIFO (named pipe), not a regular file)"]


def test_a_newer_export_schema_gets_a_warning(tmp_path: Path) -> None:
    b = ExportBuilder(schema_version="3.99.0")
    b.range("step", 0, 100)
    export = b.write(tmp_path / "future.sqlite")
    result = run("info", export, "-f", "csv")
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"nsysan: {export}: export schema 3.99.0 (by nsys 2023.4.4.54) is newer than the newest nsysan is tested "
        "with (3.20): check the results"]
    assert run("info", REAL).stderr == ""  # 3.20.3: tested


# -- 5. a property layer: random row damage never changes numbers silently -----------------------------------------
def test_random_row_damage_is_flagged_or_harmless(tmp_path_factory) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    folder = tmp_path_factory.mktemp("property")
    source = build(folder / "source.sqlite", kernels=6)
    analyses = {"kernels": lambda p: nsysan.kernels([p], select=nsysan.Selection.everything()),
                "latency": lambda p: nsysan.latency([p], select=nsysan.Selection.everything()),
                "utilization": lambda p: nsysan.utilization([p])}
    baseline = {name: f(source).frame.drop("report") for name, f in analyses.items()}
    tables = {K: 6, M: 6, N: 12, R: 12}
    mutation = st.tuples(st.sampled_from(sorted(tables)), st.integers(1, 12),
                         st.sampled_from(["null end", "reverse", "duplicate", "absurd end", "negative start"]))
    counter = iter(range(10**6))

    @hypothesis.settings(max_examples=25, deadline=None, database=None, derandomize=True)
    @hypothesis.given(st.lists(mutation, min_size=1, max_size=3))
    def check(mutations) -> None:
        path = folder / f"case{next(counter)}.sqlite"
        statements = [loosen(t) for t in {t for t, _, _ in mutations}]
        for table, row, how in mutations:
            row = 1 + (row - 1) % tables[table]
            statements.append({
                "null end": f'UPDATE "{table}" SET "end" = NULL WHERE rowid = {row};',
                "reverse": f'UPDATE "{table}" SET start = "end" + 1 WHERE rowid = {row};',
                "duplicate": f'INSERT INTO "{table}" SELECT * FROM "{table}" WHERE rowid = {row};',
                "absurd end": f'UPDATE "{table}" SET "end" = 4000000000000000000 WHERE rowid = {row};',
                "negative start": f'UPDATE "{table}" SET start = -4000000000000000000 WHERE rowid = {row};'}[how])
        damaged(source, path, *statements)
        for name, analyse in analyses.items():
            result = analyse(path)
            if result.ok and not result.notes:
                assert result.frame.drop("report").equals(baseline[name]), (name, mutations)

    check()
