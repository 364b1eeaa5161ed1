"""The ``nsysan`` command line: every command in every format, output files, and bad inputs.

Most runs go through typer's CliRunner on a small hand-built export whose numbers are worked out by hand;
one runs the installed console script in a real subprocess.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

import nsysan
from builders import MAIN_TID, ExportBuilder
from nsysan.cli import app

runner = CliRunner()
STATS = ("mean", "p50", "p95", "p99", "min", "max", "std")
LATENCY_COLUMNS = ("report", "range", "instances", "range_total_ns", "gpu_proj_total_ns", "gpu_ops_total",
                   "gpu_busy_total_ns", *[f"range_ms_{s}" for s in STATS], *[f"gpu_proj_ms_{s}" for s in STATS])
TRACE_COLUMNS = ("report", "range", "style", "level", "parent", "start_ns", "range_ns", "gpu_proj_start_ns",
                 "gpu_proj_ns", "gpu_busy_ns", "gpu_ops")
KERNEL_COLUMNS = ("report", "name", "instances", "total_ns", *[f"gpu_ms_{s}" for s in STATS])
INFO_COLUMNS = ("report", "nsys_version", "export_schema", "nvtx_ranges", "kernels", "memcpys", "memsets")
GOOD = "pipeline_gpu0_numa0_vit1x2x3"  # model vit1x2x3, no variant


def build_good(path: Path) -> Path:
    """Two steps, each with a forward; worked-out numbers are in the tests that read it."""
    b = ExportBuilder()
    b.range("step_1", 0, 1000)
    b.range("forward", 100, 600)
    b.launch(MAIN_TID, 200, 210, 300, 500, name="gemm")  # in forward and step_1: 200 ns
    b.range("step_2", 2000, 3000)
    b.range("forward", 2100, 2400)
    b.launch(MAIN_TID, 2200, 2210, 2300, 2400, name="gemm")  # in forward and step_2: 100 ns
    b.launch(MAIN_TID, 2500, 2510, 2600, 2700, kind="memcpy")  # in step_2 only
    return b.write(path)


def build_without_nvtx(path: Path) -> Path:
    b = ExportBuilder()
    b.launch(MAIN_TID, 0, 10, 20, 30, name="gemm")
    return b.write(path)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return build_good(tmp_path_factory.mktemp("good") / f"{GOOD}.sqlite")


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ok(*args: object):
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result


def read_csv(text: str) -> pl.DataFrame:
    return pl.read_csv(io.StringIO(text))


# -- every command, every format ---------------------------------------------------------------------------

def test_latency_csv_holds_the_documented_columns_and_values(good):
    frame = read_csv(ok("latency", good, "--no-merge-numbered", "-f", "csv").stdout)
    assert set(LATENCY_COLUMNS) <= set(frame.columns)
    rows = {r["range"]: r for r in frame.iter_rows(named=True)}
    assert list(rows) == ["step_1", "forward", "step_2"]  # order of first appearance
    assert {r["report"] for r in rows.values()} == {GOOD}
    # forward: 2 instances of 500 and 300 ns CPU, ops of 200 and 100 ns.
    f = rows["forward"]
    assert (f["instances"], f["range_total_ns"], f["gpu_proj_total_ns"], f["gpu_ops_total"],
            f["gpu_busy_total_ns"]) == (2, 800, 300, 2, 300)
    assert (f["range_ms_mean"], f["range_ms_min"], f["range_ms_max"]) == pytest.approx((4e-4, 3e-4, 5e-4))
    assert f["gpu_proj_ms_p50"] == pytest.approx(1.5e-4)
    # step_2: kernel 2300..2400 and memcpy 2600..2700 -> projection 400, busy 200, 2 ops.
    s = rows["step_2"]
    assert (s["gpu_proj_total_ns"], s["gpu_busy_total_ns"], s["gpu_ops_total"]) == (400, 200, 2)


def test_latency_pools_numbered_ranges_by_default(good):
    rows = {r["range"]: r for r in read_csv(ok("latency", good, "-f", "csv").stdout).iter_rows(named=True)}
    assert list(rows) == ["step_*", "forward"]
    # step_1 (1000 ns, projection 200, busy 200, 1 op) and step_2 (1000 ns, projection 400, busy 200, 2 ops).
    s = rows["step_*"]
    assert (s["instances"], s["range_total_ns"], s["gpu_proj_total_ns"], s["gpu_busy_total_ns"],
            s["gpu_ops_total"]) == (2, 2000, 600, 400, 3)
    assert (s["gpu_proj_ms_min"], s["gpu_proj_ms_max"]) == pytest.approx((2e-4, 4e-4))


def test_latency_trace_csv(good):
    frame = read_csv(ok("latency", "--trace", good, "-f", "csv").stdout)
    assert frame.columns[:len(TRACE_COLUMNS)] == list(TRACE_COLUMNS)
    got = frame.select("range", "level", "parent", "start_ns", "range_ns", "gpu_proj_start_ns", "gpu_proj_ns",
                       "gpu_busy_ns", "gpu_ops").rows()
    assert got == [
        ("step_1", 0, None, 0, 1000, 300, 200, 200, 1),
        ("forward", 1, "step_1", 100, 500, 300, 200, 200, 1),
        ("step_2", 0, None, 2000, 1000, 2300, 400, 200, 2),
        ("forward", 1, "step_2", 2100, 300, 2300, 100, 100, 1),
    ]


def test_latency_by_model_csv(good):
    frame = read_csv(ok("latency", "--by-model", good, "-f", "csv").stdout)
    assert "report" not in frame.columns
    assert frame.columns[:3] == ["model", "variant", "range"]
    assert set(LATENCY_COLUMNS) - {"report"} <= set(frame.columns)
    assert frame["model"].unique().to_list() == ["vit1x2x3"]
    assert frame["variant"].null_count() == frame.height  # no variant in the name


def test_latency_json_and_table(good):
    rows = json.loads(ok("latency", good, "--no-merge-numbered", "-f", "json").stdout)
    assert [r["range"] for r in rows] == ["step_1", "forward", "step_2"]
    assert set(LATENCY_COLUMNS) <= set(rows[0])
    assert rows[1]["instances"] == 2 and rows[1]["gpu_ops_total"] == 2
    trace = json.loads(ok("latency", "--trace", good, "-f", "json").stdout)
    assert [(r["range"], r["gpu_proj_ns"]) for r in trace] == [
        ("step_1", 200), ("forward", 200), ("step_2", 400), ("forward", 100)]
    assert set(TRACE_COLUMNS) <= set(trace[0])

    table = ok("latency", good, "--no-merge-numbered").stdout  # table is the default
    assert "Stage latency (ms)" in table
    for text in ("range", "instances", "gpu_proj_", "ms_mean", "step_1", "forward", "step_2", GOOD):
        assert text in table, text


def test_latency_parquet(good, tmp_path):
    out = tmp_path / "lat.parquet"
    assert ok("latency", good, "-f", "parquet", "-o", out).stdout == ""
    frame = pl.read_parquet(out)
    assert set(LATENCY_COLUMNS) <= set(frame.columns)
    assert frame.filter(pl.col("range") == "forward")["gpu_ops_total"].to_list() == [2]
    ok("latency", "--trace", good, "-o", tmp_path / "trace.parquet")  # format from the extension
    assert pl.read_parquet(tmp_path / "trace.parquet").height == 4


def test_kernels_every_format(good, tmp_path):
    frame = read_csv(ok("kernels", good, "-f", "csv").stdout)
    assert set(KERNEL_COLUMNS) <= set(frame.columns)
    # Two gemm kernels of 200 and 100 ns; the memcpy is not a kernel.
    assert frame.select("report", "name", "instances", "total_ns").rows() == [(GOOD, "gemm", 2, 300)]
    assert frame["gpu_ms_mean"][0] == pytest.approx(1.5e-4)
    rows = json.loads(ok("kernels", good, "-f", "json").stdout)
    assert [(r["name"], r["total_ns"]) for r in rows] == [("gemm", 300)]
    assert set(KERNEL_COLUMNS) <= set(rows[0])
    table = ok("kernels", good, "-f", "table").stdout
    assert "CUDA kernels (ms)" in table and "gemm" in table and "time_" in table and "pct" in table
    ok("kernels", good, "-f", "parquet", "-o", tmp_path / "k.parquet")
    assert pl.read_parquet(tmp_path / "k.parquet")["total_ns"].to_list() == [300]


def test_info_every_format(good, tmp_path):
    frame = read_csv(ok("info", good, "-f", "csv").stdout)
    assert set(INFO_COLUMNS) <= set(frame.columns)
    row = frame.row(0, named=True)
    # 4 NVTX ranges, 2 kernels, 1 memcpy, 0 memsets, 3 CUDA calls, no GPU table; metadata from the builder.
    assert (row["report"], row["nvtx_ranges"], row["kernels"], row["memcpys"], row["memsets"]) == (GOOD, 4, 2, 1, 0)
    assert (row["nsys_version"], row["export_schema"]) == ("2023.4.4.54", "3.11.1")
    rows = json.loads(ok("info", good, "-f", "json").stdout)
    assert rows[0]["report"] == GOOD and rows[0]["cuda_api_calls"] == 3
    assert GOOD in ok("info", good).stdout
    ok("info", good, "-o", tmp_path / "info.parquet")
    assert pl.read_parquet(tmp_path / "info.parquet")["kernels"].to_list() == [2]


# -- output files ----------------------------------------------------------------------------------------------

def test_output_file_replaces_an_existing_file_atomically(good, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "latency.csv"
    out.write_text("old contents\n")
    result = ok("latency", good, "-o", out)  # csv from the extension
    assert result.stdout == ""
    assert set(LATENCY_COLUMNS) <= set(read_csv(out.read_text()).columns)
    assert sorted(p.name for p in out_dir.iterdir()) == ["latency.csv"]  # no temporary file left behind
    ok("info", good, "-o", out_dir / "new" / "info.json")  # missing folders are created
    assert json.loads((out_dir / "new" / "info.json").read_text())[0]["report"] == GOOD
    assert sorted(p.name for p in (out_dir / "new").iterdir()) == ["info.json"]


def test_output_to_a_directory_is_a_one_line_error(good, tmp_path):
    target = tmp_path / "a_folder"
    target.mkdir()
    result = invoke("info", good, "-o", target)
    assert result.exit_code != 0
    assert_one_line_error(result, target, "")
    assert [p.name for p in tmp_path.iterdir()] == ["a_folder"] and not any(target.iterdir())


# -- finding inputs ------------------------------------------------------------------------------------------

def test_directories_are_searched_recursively(good, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(good, tmp_path / "a" / "one.sqlite")
    shutil.copy(good, tmp_path / "a" / "b" / "two.sqlite")
    (tmp_path / "a" / "b" / "notes.txt").write_text("not an export")
    frame = read_csv(ok("info", tmp_path, "-f", "csv").stdout)
    assert sorted(frame["report"].to_list()) == ["one", "two"]  # not notes.txt


def test_no_input_is_a_usage_message():
    result = invoke("latency")
    assert result.exit_code != 0
    assert result.stderr.strip() == "nsysan: no input: give export paths or --sample"


def test_console_script_on_the_sample_sweep():
    script = Path(sys.executable).with_name("nsysan")
    assert script.exists(), script
    done = subprocess.run([str(script), "info", "--sample", "-f", "csv"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    frame = read_csv(done.stdout)
    assert frame["report"].to_list() == [p.name.removesuffix(".sqlite") for p in nsysan.sample_paths()]
    assert frame.height == 5
    # Row counts straight from each export's tables (sqlite3, not nsysan).
    for row, path in zip(frame.iter_rows(named=True), nsysan.sample_paths(), strict=True):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        count = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in tables else 0 for t in (
            "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
            "CUPTI_ACTIVITY_KIND_RUNTIME")}
        ranges = con.execute("SELECT count(*) FROM NVTX_EVENTS WHERE eventType IN (59, 60, 70, 71)").fetchone()[0]
        con.close()
        assert (row["nvtx_ranges"], row["kernels"], row["memcpys"], row["memsets"], row["cuda_api_calls"]) == (
            ranges, count["CUPTI_ACTIVITY_KIND_KERNEL"], count["CUPTI_ACTIVITY_KIND_MEMCPY"],
            count["CUPTI_ACTIVITY_KIND_MEMSET"], count["CUPTI_ACTIVITY_KIND_RUNTIME"]), row
        assert row["gpus"] == 1
    assert frame["nsys_version"].unique().to_list() == ["2025.3.2.0"]


# -- bad inputs ------------------------------------------------------------------------------------------------

def make_bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, words the error line must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "x.sqlite"
    text.write_text("this is not a database\n")
    real = nsysan.sample_paths()[0]
    truncated = folder / "truncated.sqlite"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    other = folder / "other_app.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'a')")
    con.commit()
    con.close()
    empty = folder / "empty.sqlite"
    empty.write_bytes(b"")
    return {
        "text": (text, "not an SQLite file"),
        "truncated": (truncated, "truncated"),
        "not_nsys": (other, "not an nsys export"),
        "empty": (empty, "empty file"),
        "missing": (folder / "missing.sqlite", "no such file"),
    }


def assert_one_line_error(result, path: Path, problem: str) -> None:
    """Exactly one stderr line names ``path`` and says ``problem``; stderr holds only nsysan's one-line
    messages (no traceback)."""
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr, result.stderr
    naming = [line for line in lines if str(path) in line]
    assert len(naming) == 1, result.stderr
    assert problem in naming[0], result.stderr
    assert all(line.startswith("nsysan: ") for line in lines), result.stderr


BAD_CASES = ["text", "truncated", "not_nsys", "empty", "missing"]


@pytest.mark.parametrize("command", ["latency", "kernels", "info"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_one_bad_input(tmp_path, command, case):
    path, problem = make_bad_inputs(tmp_path)[case]
    result = invoke(command, path, "-f", "csv")
    assert result.exit_code != 0
    assert result.stdout == ""
    assert_one_line_error(result, path, problem)


def test_export_without_nvtx(tmp_path):
    path = build_without_nvtx(tmp_path / "no_nvtx.sqlite")
    result = invoke("latency", path)
    assert result.exit_code != 0 and result.stdout == ""
    assert_one_line_error(result, path, "no NVTX ranges")
    # The same export is fine for the commands that do not need NVTX.
    assert read_csv(ok("kernels", path, "-f", "csv").stdout)["name"].to_list() == ["gemm"]
    assert read_csv(ok("info", path, "-f", "csv").stdout)["nvtx_ranges"].to_list() == [0]


def test_export_whose_nvtx_table_holds_no_ranges(tmp_path):
    # NVTX_EVENTS exists but holds only a domain-create event (no push/pop or start/end range).
    b = ExportBuilder()
    b.domain("io", 5)
    b.launch(MAIN_TID, 0, 10, 20, 30, name="gemm")
    path = b.write(tmp_path / "no_ranges.sqlite")
    result = invoke("latency", path, "-f", "csv")
    assert result.exit_code != 0 and result.stdout == ""
    assert_one_line_error(result, path, "no NVTX ranges")


@pytest.mark.parametrize("command", ["latency", "kernels", "info"])
def test_good_and_bad_inputs_together(good, tmp_path, command):
    bad = make_bad_inputs(tmp_path / "bad")
    if command == "latency":
        bad["no_nvtx"] = (build_without_nvtx(tmp_path / "bad" / "no_nvtx.sqlite"), "no NVTX ranges")
    result = invoke(command, good, *[p for p, _ in bad.values()], "-f", "csv")
    assert result.exit_code == 3, result.stderr
    # The good report is still analysed and written.
    frame = read_csv(result.stdout)
    assert frame.height > 0 and frame["report"].unique().to_list() == [GOOD]
    # Every failure is listed, one line each.
    for path, problem in bad.values():
        assert_one_line_error(result, path, problem)


# -- help ---------------------------------------------------------------------------------------------------

def test_every_command_has_help_with_an_example():
    group = typer.main.get_command(app)
    names = sorted(group.commands)
    assert {"latency", "kernels", "info"} <= set(names)
    for name in names:
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        examples = [line.strip() for line in result.stdout.splitlines() if "Example:" in line]
        assert examples and examples[0].startswith(f"Example: nsysan {name}"), (name, result.stdout)


# -- outputs never destroy inputs ----------------------------------------------------------------------------

def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["kernels", "latency", "info", "bandwidth", "utilization", "compare"])
def test_output_onto_the_input_export_is_refused_and_the_export_survives(command, tmp_path):
    export = build_good(tmp_path / f"{GOOD}.sqlite")
    before = _bytes_of(tmp_path)
    result = invoke(command, export, "-o", export)
    assert result.exit_code == 1
    assert_one_line_error(result, export, "input")
    assert _bytes_of(tmp_path) == before


def test_output_onto_other_protected_files_is_refused(tmp_path):
    export = build_good(tmp_path / f"{GOOD}.sqlite")
    other = build_good(tmp_path / "other.sqlite")  # an nsys export that is not an input
    sidecar = tmp_path / f"{GOOD}.meta.json"
    sidecar.write_text('{"batch_size": 10}')
    report = tmp_path / "run.nsys-rep"
    report.write_bytes(b"NVIDIA Tegra Profiler Report 2025.3.1\n" + bytes(range(256)))
    parquet = tmp_path / "run_pqtdir"
    parquet.mkdir()
    (parquet / "StringIds.parquet").write_bytes(b"PAR1")
    before = _bytes_of(tmp_path)
    for target, problem in [(other, "nsys export or report"), (report, "nsys export or report"),
                            (sidecar, "input"), (parquet / "x.csv", "parquetdir"), (tmp_path / "../" / tmp_path.name /
                                                                                   f"{GOOD}.sqlite", "input")]:
        result = invoke("kernels", export, "-o", target)
        assert result.exit_code == 1, target
        assert_one_line_error(result, target, problem)
    assert _bytes_of(tmp_path) == before


def test_output_files_follow_the_umask(good, tmp_path):
    old = os.umask(0o022)
    try:
        ok("info", good, "-o", tmp_path / "info.csv")
    finally:
        os.umask(old)
    assert (tmp_path / "info.csv").stat().st_mode & 0o777 == 0o644


# -- tables people read ----------------------------------------------------------------------------------------

TABLE_COMMANDS = [["latency"], ["latency", "--by-model"], ["latency", "--trace"], ["kernels"], ["kernels", "--by-model"],
                  ["info"], ["bandwidth"], ["bandwidth", "--by-stage"], ["bandwidth", "--histogram"],
                  ["utilization", "--window", "forward"], ["utilization", "--kernels"], ["throughput", "--by-model"],
                  ["compare", "--by", "model,variant"]]


@pytest.mark.parametrize(("command", "width"), [*((c, 100) for c in TABLE_COMMANDS),
                                                  *((c, 120) for c in TABLE_COMMANDS[::3])],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_tables_fit_the_terminal_without_wrapping(command, width):
    # The two samples with the longest report and kernel names.
    wide = [str(p) for p in nsysan.sample_paths() if "vit16x12x1024" in p.name or "pageable" in p.name]
    result = runner.invoke(app, [*command, *wide], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= width, max(lines, key=len)
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    body = lines[rule + 1:]
    # No cell wraps: every row is one line (a continuation line would start with spaces under the first column).
    first = result.stdout.splitlines()[rule + 1]
    indent = len(first) - len(first.lstrip())
    assert all(len(line) - len(line.lstrip()) == indent for line in body if line and not line.startswith(
        ("1 more", "2 more", "3 more", "4 more", "5 more", "6 more", "7 more", "8 more", "9 more"))), body


def test_microsecond_kernels_keep_their_digits(good):
    # gemm: 200 and 100 ns -> 0.00015 ms mean; three decimals would print 0.000.
    table = ok("kernels", good).stdout
    assert "0.000150" in table


def test_names_are_printed_as_written(tmp_path):
    b = ExportBuilder()
    b.range("[bold]x[/bold]", 0, 1000)
    b.range("[link=http://example.com]y[/link]", 2000, 3000)
    b.launch(MAIN_TID, 100, 110, 200, 300, name="[red]k[/red](int)")
    path = b.write(tmp_path / "markup.sqlite")
    table = ok("latency", path).stdout
    assert "[bold]x[/bold]" in table and "[link=http://example.com]y[/link]" in table
    assert "[red]k[/red](…)" in ok("kernels", path).stdout  # the table's compact name, markup and all
    assert "\x1b" not in table


def test_every_analysis_command_selects_the_same_instances_by_default():
    """One default for every command: the option group builds exactly nsysan.Selection()."""
    from nsysan.cli.options import _selection
    from nsysan.selection import Selection

    assert _selection(None, False, 0, True, None) == Selection()
    assert _selection(None, True, 3, False, None) == Selection.everything()
    assert _selection(["w*"], False, 2, True, ["it_*"]) == Selection(exclude_within="w*", skip_first=2, batches="it_*")
    group = typer.main.get_command(app)
    for name in ("latency", "kernels", "bandwidth", "utilization", "throughput", "compare", "numa"):
        params = {p.name: p.default for p in group.commands[name].params}
        assert (params["exclude_within"], params["all_instances"], params["skip_first"], params["merge_numbered"],
                params["batches"]) == (None, False, 0, True, None), name


def test_the_runner_needs_neither_polars_nor_duckdb(tmp_path):
    """``nsysan run`` on a machine with only the runner's dependencies: the analysis packages cannot be imported."""
    code = ("import sys; sys.modules.update(polars=None, duckdb=None, pyarrow=None); "
            "sys.argv = ['nsysan', 'run', 'experiment=quick_test', 'hardware=cpu', '--dry-run', "
            f"'output_dir={tmp_path}']; from nsysan.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pipeline_gpu0_numa0_vit0x0x0" in done.stdout
