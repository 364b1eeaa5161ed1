"""Reconcile nsysan with NVIDIA's own numbers: ``nsys stats`` run live on the same exports.

Expected values are never written down here: every one comes from the installed ``nsys stats`` (2023.4, and
2022.4's own report for its own export), run in this session on the very files nsysan reads. Times and
counts are integers and must be equal, not close.

* H100 samples (nsysan.sample_paths(), nsys 2025.3 exports with CUDA):
  ``nvtx_gpu_proj_sum``  vs range_trace/latency_summary (library and ``nsysan latency --format csv``),
  ``nvtx_sum``           vs latency_summary (CPU time of every range),
  ``nvtx_pushpop_trace`` vs range_trace's range_id / parent_id / level,
  ``cuda_gpu_kern_sum`` and ``cuda_gpu_kern_sum:base`` vs kernel_summary with demangled / short names
  (library and ``nsysan kernels --format csv``).
* The same for a real GPU run of nsysan's own workload (tests/fixtures/gpu_run: ``nsysan run`` quick_test on
  an H100, exported there by ``nsysan export``).
* CPU captures of workloads/cpu_nvtx.py made live by conftest (no CUDA): ``nvtx_sum`` vs latency_summary,
  for the 2023.4 sqlite and parquetdir exports and the 2022.4 sqlite export.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import nsysan
from nsysan.analyses.kernels import kernel_durations, kernel_summary
from nsysan.analyses.latency import latency_summary, range_trace
from nsysan.selection import Selection
from support import Lazy
from support import nsys_stats as run_nsys_stats

EVERYTHING = Selection.everything()

GPU_RUN = sorted((Path(__file__).parent / "fixtures" / "gpu_run").glob("*.sqlite"))
SAMPLES = {path.name.removesuffix(".sqlite"): path for path in [*nsysan.sample_paths(), *GPU_RUN]}
H100_REPORTS = ("nvtx_gpu_proj_sum", "nvtx_sum", "nvtx_pushpop_trace", "cuda_gpu_kern_sum", "cuda_gpu_kern_sum:base")
# Columns that hold names: read them as text whatever they look like.
TEXT_COLUMNS = {"Range": pl.String, "Style": pl.String, "Name": pl.String, "RangeStack": pl.String,
                "NameTree": pl.String}


def nsys_stats(nsys: str, export: Path, reports: tuple[str, ...], folder: Path) -> dict[str, pl.DataFrame]:
    """``nsys stats`` tables of one export, with name columns read as text."""
    return run_nsys_stats(nsys, export, reports, folder, schema_overrides=TEXT_COLUMNS)


@pytest.fixture(scope="session")
def h100_stats(nsys: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, pl.DataFrame]]:
    """nsys stats of every sample export: {sample name: {report: table}}."""
    root = tmp_path_factory.mktemp("nsys_stats_h100")
    return Lazy(SAMPLES, lambda name: nsys_stats(nsys, SAMPLES[name], H100_REPORTS, root / name))


@pytest.fixture(scope="session")
def h100_traces() -> dict[str, pl.DataFrame]:
    def trace(name: str) -> pl.DataFrame:
        with nsysan.open(SAMPLES[name]) as report:
            return range_trace(report)
    return Lazy(SAMPLES, trace)


def test_samples_present() -> None:
    assert len(GPU_RUN) == 1 and len(SAMPLES) == 6, sorted(SAMPLES)


def assert_same_keys(nsys_keys: set, ours: set, what: str) -> None:
    assert nsys_keys == ours, (f"{what}: only in nsys stats: {sorted(nsys_keys - ours, key=str)[:10]}; "
                               f"only in nsysan: {sorted(ours - nsys_keys, key=str)[:10]}")


def assert_columns_equal(joined: pl.DataFrame, pairs: dict[str, str], key: list[str], what: str) -> None:
    """Every (nsys column, nsysan column) pair of ``joined`` must be equal on every row (null only with null)."""
    for theirs, ours in pairs.items():
        bad = joined.filter(pl.col(theirs).ne_missing(pl.col(ours)))
        assert bad.is_empty(), f"{what}: nsys {theirs!r} != nsysan {ours!r}:\n{bad.select(*key, theirs, ours)}"


# -- NVTX GPU projection -------------------------------------------------------------------------------------

PROJ_PAIRS = {"Range Instances": "gpu_instances", "Total Proj Time (ns)": "gpu_proj_total_ns",
              "Total GPU Ops": "gpu_ops_total", "Total Range Time (ns)": "gpu_range_total_ns"}


def our_projection_summary(trace: pl.DataFrame) -> pl.DataFrame:
    """latency_summary's GPU columns, plus the CPU time of the instances that launched GPU work: nsys's
    "Total Range Time" counts only those (nvtx_gpu_proj_sum lists projected instances only), while our
    ``range_total_ns`` counts every instance."""
    summary = latency_summary(trace, by=(), select=EVERYTHING)
    gpu_range = (trace.filter(pl.col("gpu_ops") > 0).group_by("range", "style")
                 .agg(pl.col("range_ns").sum().alias("gpu_range_total_ns")))
    return (summary.filter(pl.col("gpu_instances") > 0)
            .join(gpu_range, on=["range", "style"], how="left")
            .select("range", "style", "gpu_instances", "gpu_proj_total_ns", "gpu_ops_total", "gpu_range_total_ns"))


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_gpu_projection_matches_nvtx_gpu_proj_sum(sample: str, h100_stats, h100_traces) -> None:
    theirs = h100_stats[sample]["nvtx_gpu_proj_sum"]
    ours = our_projection_summary(h100_traces[sample])
    assert not theirs.is_empty()
    assert_same_keys(set(theirs.select("Range", "Style").iter_rows()), set(ours.select("range", "style").iter_rows()),
                     f"{sample}: ranges with GPU work")
    joined = theirs.join(ours, left_on=["Range", "Style"], right_on=["range", "style"], how="inner")
    assert joined.height == theirs.height
    assert_columns_equal(joined, PROJ_PAIRS, ["Range", "Style"], sample)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_range_level_matches_nvtx_gpu_proj_sum(sample: str, h100_stats, h100_traces) -> None:
    """nsys's "Avg Range Lvl" (rounded to 0.1) of projected instances equals the mean of our ``level``."""
    theirs = h100_stats[sample]["nvtx_gpu_proj_sum"]
    ours = (h100_traces[sample].filter(pl.col("gpu_ops") > 0).group_by("range", "style")
            .agg(pl.col("level").mean().alias("level_mean")))
    joined = theirs.join(ours, left_on=["Range", "Style"], right_on=["range", "style"], how="inner")
    assert joined.height == theirs.height
    bad = joined.filter((pl.col("Avg Range Lvl") - pl.col("level_mean")).abs() > 0.05 + 1e-9)
    assert bad.is_empty(), bad.select("Range", "Avg Range Lvl", "level_mean")


# -- CPU time of every range ---------------------------------------------------------------------------------

def load_ranges(export: Path) -> tuple[pl.DataFrame, set[tuple[str, str]]]:
    """range_trace of an export, and the (range, style) keys that have an instance that never ended."""
    with nsysan.open(export) as report:
        unended = set(report.sql("SELECT DISTINCT name, style FROM nvtx_ranges WHERE unended").fetchall())
        return range_trace(report), unended


def reconcile_nvtx_sum(theirs: pl.DataFrame, trace: pl.DataFrame, unended: set[tuple[str, str]], what: str) -> None:
    """Per (range, style): instances and total CPU time equal nsys's nvtx_sum (nvtxsum in 2022.4).

    Both sides include every push/pop and start/end range of every thread and domain (domain ranges named
    "domain:message"), ranges that end on another thread included, grouped by name and style. One
    definition differs: a range that never ended ends, for nvtx_sum, at the last timestamp of *any* NVTX
    event (marks, domain creation included), and for nsysan (as for nvtx_gpu_proj_sum) at the last
    timestamp of a *range* event. So the total time of a (range, style) with unended instances is left out;
    its instance count is still compared. (None of the exports here has unended ranges.)"""
    summary = latency_summary(trace, by=(), select=EVERYTHING)
    assert_same_keys(set(theirs.select("Range", "Style").iter_rows()),
                     set(summary.select("range", "style").iter_rows()), f"{what}: ranges")
    joined = theirs.join(summary, left_on=["Range", "Style"], right_on=["range", "style"], how="inner")
    assert joined.height == theirs.height
    assert_columns_equal(joined, {"Instances": "instances"}, ["Range", "Style"], what)
    unended_keys = pl.DataFrame(sorted(unended), schema={"Range": pl.String, "Style": pl.String}, orient="row")
    ended = joined.join(unended_keys, on=["Range", "Style"], how="anti")
    assert_columns_equal(ended, {"Total Time (ns)": "range_total_ns"}, ["Range", "Style"], what)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_range_times_match_nvtx_sum(sample: str, h100_stats, h100_traces) -> None:
    trace, unended = load_ranges(SAMPLES[sample])
    reconcile_nvtx_sum(h100_stats[sample]["nvtx_sum"], trace, unended, sample)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_nesting_matches_nvtx_pushpop_trace(sample: str, h100_stats, h100_traces) -> None:
    """range_id / parent_id / level of every push/pop range equal nsys's RangeId / ParentId / Lvl.

    The samples hold push/pop ranges only; with start/end ranges the two would differ by definition
    (nvtx_pushpop_trace nests push/pop ranges only, nsysan nests every same-thread range as
    nvtx_gpu_proj_sum does)."""
    theirs = h100_stats[sample]["nvtx_pushpop_trace"]
    trace = h100_traces[sample]
    assert set(trace["style"].unique()) == {"PushPop"}
    ours = trace.select("range_id", "parent_id", "level", "range", "start_ns", "range_ns", "tid")
    assert_same_keys(set(theirs["RangeId"]), set(ours["range_id"]), f"{sample}: range ids")
    joined = theirs.join(ours, left_on="RangeId", right_on="range_id", how="inner")
    assert_columns_equal(joined, {"ParentId": "parent_id", "Lvl": "level", "Name": "range", "Start (ns)": "start_ns",
                                  "Duration (ns)": "range_ns", "TID": "tid"}, ["RangeId"], sample)


# -- CUDA kernels --------------------------------------------------------------------------------------------

KERNEL_PAIRS = {"Instances": "instances", "Total Time (ns)": "total_ns"}
NAME_REPORTS = {"demangled": "cuda_gpu_kern_sum", "short": "cuda_gpu_kern_sum:base"}


def reconcile_kernels(theirs: pl.DataFrame, ours: pl.DataFrame, what: str) -> None:
    assert not theirs.is_empty()
    assert_same_keys(set(theirs["Name"]), set(ours["name"]), f"{what}: kernel names")
    joined = theirs.join(ours, left_on="Name", right_on="name", how="inner")
    assert joined.height == theirs.height == ours.height
    assert_columns_equal(joined, KERNEL_PAIRS, ["Name"], what)


@pytest.mark.parametrize("names", sorted(NAME_REPORTS))
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_kernel_summary_matches_cuda_gpu_kern_sum(sample: str, names: str, h100_stats) -> None:
    with nsysan.open(SAMPLES[sample]) as report:
        ours = kernel_summary(kernel_durations(report, names=names, select=EVERYTHING), by=())  # type: ignore[arg-type]
    reconcile_kernels(h100_stats[sample][NAME_REPORTS[names]], ours, f"{sample} ({names} names)")


# -- the same through the command line -------------------------------------------------------------------------

def run_cli(*args: str) -> pl.DataFrame:
    done = subprocess.run([sys.executable, "-m", "nsysan", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"nsysan {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return pl.read_csv(io.StringIO(done.stdout), schema_overrides={"report": pl.String, "range": pl.String,
                                                                    "name": pl.String},
                       infer_schema_length=None)


def test_cli_latency_matches_nvtx_gpu_proj_sum(h100_stats) -> None:
    """``nsysan latency SAMPLES... --all-instances --no-merge-numbered --format csv`` (what nsys counts): per
    report, the GPU columns equal nvtx_gpu_proj_sum."""
    out = run_cli("latency", *map(str, SAMPLES.values()), "--all-instances", "--no-merge-numbered", "--format", "csv")
    assert set(out["report"]) == set(SAMPLES)
    for sample in SAMPLES:
        theirs = h100_stats[sample]["nvtx_gpu_proj_sum"]
        ours = out.filter((pl.col("report") == sample) & (pl.col("gpu_instances") > 0))
        assert_same_keys(set(theirs.select("Range", "Style").iter_rows()),
                         set(ours.select("range", "style").iter_rows()), f"CLI {sample}: ranges with GPU work")
        joined = theirs.join(ours, left_on=["Range", "Style"], right_on=["range", "style"], how="inner")
        pairs = {k: v for k, v in PROJ_PAIRS.items() if v != "gpu_range_total_ns"}
        assert_columns_equal(joined, pairs, ["Range", "Style"], f"CLI {sample}")


def test_cli_kernels_short_names_match_cuda_gpu_kern_sum_base(h100_stats) -> None:
    out = run_cli("kernels", *map(str, SAMPLES.values()), "--names", "short", "--all-instances", "--format", "csv")
    assert set(out["report"]) == set(SAMPLES)
    for sample in SAMPLES:
        reconcile_kernels(h100_stats[sample]["cuda_gpu_kern_sum:base"], out.filter(pl.col("report") == sample),
                          f"CLI {sample} (short names)")


# -- CPU-made exports (live captures, conftest) --------------------------------------------------------------

@pytest.mark.parametrize("form", ["sqlite", "parquetdir"])
def test_cpu_2023_range_times_match_nvtx_sum(form: str, cpu_capture_2023, tmp_path: Path) -> None:
    """nsys 2023.4 capture: nsysan over the sqlite and the parquetdir export vs nvtx_sum over the sqlite
    export of the same report (nsys stats cannot read parquet)."""
    theirs = nsys_stats(cpu_capture_2023.nsys, cpu_capture_2023.sqlite, ("nvtx_sum",), tmp_path)["nvtx_sum"]
    export = cpu_capture_2023.sqlite if form == "sqlite" else cpu_capture_2023.parquetdir
    reconcile_nvtx_sum(theirs, *load_ranges(export), f"nsys 2023.4 {form}")


def test_cpu_2022_range_times_match_nvtx_sum(cpu_capture_2022, nsys: str, tmp_path: Path) -> None:
    """nsys 2022.4 capture: vs 2023.4's nvtx_sum and vs 2022.4's own nvtxsum (same definitions)."""
    trace, unended = load_ranges(cpu_capture_2022.sqlite)
    theirs = nsys_stats(nsys, cpu_capture_2022.sqlite, ("nvtx_sum",), tmp_path / "2023")["nvtx_sum"]
    reconcile_nvtx_sum(theirs, trace, unended, "nsys 2022.4 sqlite (2023.4 nvtx_sum)")
    own = nsys_stats(cpu_capture_2022.nsys, cpu_capture_2022.sqlite, ("nvtxsum",), tmp_path / "2022")["nvtxsum"]
    reconcile_nvtx_sum(own, trace, unended, "nsys 2022.4 sqlite (2022.4 nvtxsum)")
