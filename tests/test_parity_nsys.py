"""Parity with ``nsys stats`` per instance and per statistic, not only in totals.

Expected values come from the installed nsys 2023.4, run live on the very files nsysan reads:

* ``nvtx_gpu_proj_trace``: every projected range instance: RangeId, name, style, projected start and
  duration, CPU start and duration, GPU ops, level, parent, pid, tid;
* ``nvtx_gpu_proj_sum``: Avg / Med / Min / Max / StdDev of the projected time per range;
* ``cuda_gpu_kern_sum`` (and ``:base``): Time (%), Avg / Med / Min / Max / StdDev per kernel name;
* ``nvtx_sum``: Avg / Med / Min / Max / StdDev of the CPU time per range;

on every real export in the repository (the bundled H100 sweep and tests/fixtures/gpu_run) and on hand-built
exports (tests/builders.py) that nsys 2023.4 reads as it reads its own. nsys prints averages and standard
deviations rounded to 0.1 ns and percentages to 0.1 %; nsysan's are compared to that rounding.

Where nsysan's definition differs from nsys's by design, the case says so and leaves out only that column:
a range ended on another thread (nsys does not project it either, but counts its launches among those outside
every range, in a row without a name: checked against nsysan's unattributed launches), ranges with
identical bounds (nsys leaves their level empty, nsysan nests the later one in the earlier), and never-ended
ranges in ``nvtx_sum`` (which ends them at the last NVTX event of any kind, marks included).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import nsysan
from builders import MAIN_TID, ExportBuilder
from nsysan.attribution import launch_pairs, launches
from nsysan.analyses.kernels import kernel_durations, kernel_summary
from nsysan.analyses.latency import latency_summary, range_trace
from nsysan.selection import Selection
from support import Lazy, nsys_stats

EVERYTHING = Selection.everything()
#: Every real export in the repository: the bundled sweep and whatever tests/fixtures holds (gpu_run, and the
#: captures later fixtures add).
FIXTURE_EXPORTS = sorted((Path(__file__).parent / "fixtures").rglob("*.sqlite"))
REAL = {path.name.removesuffix(".sqlite"): path for path in [*nsysan.sample_paths(), *FIXTURE_EXPORTS]}
REPORTS = ("nvtx_gpu_proj_trace", "nvtx_gpu_proj_sum", "nvtx_sum", "cuda_gpu_kern_sum", "cuda_gpu_kern_sum:base")
TEXT = {"Range": pl.String, "Style": pl.String, "Name": pl.String, "RangeStack": pl.String, "ParentId": pl.Int64,
        "Lvl": pl.Int64, "RangeId": pl.Int64, "Avg Range Lvl": pl.Float64}
OTHER_TID = MAIN_TID + 1


# -- hand-built cases: every one of them is read by nsys stats too ---------------------------------------------------
def nested() -> ExportBuilder:
    b = ExportBuilder()
    b.range("outer", 0, 1000)
    b.range("mid", 100, 500)
    b.range("inner", 200, 300)
    b.range("sibling", 600, 700)
    b.launch(MAIN_TID, 210, 220, 400, 450, name="gemm")
    b.launch(MAIN_TID, 350, 360, 460, 480, name="relu")
    b.launch(MAIN_TID, 650, 660, 800, 900, kind="memcpy")
    b.launch(MAIN_TID, 50, 60, 70, 90, kind="memset")
    return b


def statistics() -> ExportBuilder:
    """Six instances of step (four with GPU work: an even count, so the median is a mean of two), of lengths
    that make every statistic distinct, and kernels of three names with 1, 2 and 5 instances."""
    b = ExportBuilder()
    t = 0
    for i, (cpu, gpu) in enumerate([(1000, 300), (4000, None), (2500, 700), (9000, 100), (1500, None),
                                    (3000, 1250)]):
        b.range("step", t, t + cpu)
        b.range("tiny", t + 1, t + 3)
        if gpu is not None:
            b.launch(MAIN_TID, t + 5, t + 9, t + 20, t + 20 + gpu // 2, name="gemm<float>(int)")
            b.launch(MAIN_TID, t + 10, t + 14, t + 30 + gpu // 2, t + 20 + gpu, name="relu(float*)")
        t += cpu + 100 * (i + 1)
    b.range("once", t, t + 777)
    b.launch(MAIN_TID, t + 1, t + 2, t + 5, t + 18, name="softmax")
    return b


def after_the_range() -> ExportBuilder:
    b = ExportBuilder()
    b.range("submit", 0, 100)
    b.range("later", 400, 900)
    b.launch(MAIN_TID, 10, 20, 500, 800)
    b.launch(MAIN_TID, 30, 40, 950, 1200, kind="memcpy")
    return b


def threads_and_processes() -> ExportBuilder:
    b = ExportBuilder()
    b.range("a", 0, 100, tid=MAIN_TID)
    b.range("b", 0, 100, tid=OTHER_TID)
    b.launch(OTHER_TID, 10, 20, 30, 40)
    b.launch(MAIN_TID, 50, 60, 60, 70)
    b.range("p2", 0, 100, pid=200, tid=101)
    b.call(101, 50, 60, pid=200, correlation_id=1)  # the correlation id of a's first launch, other process
    b.op(1, 200, 260, pid=200, kind="memcpy")
    return b


def crossing() -> ExportBuilder:
    b = ExportBuilder()
    b.range("step", 100, 200)
    b.range("async_io", 150, 300, style="startend")
    b.range("inner", 210, 280)
    b.launch(MAIN_TID, 120, 130, 1000, 1010)
    b.launch(MAIN_TID, 160, 170, 1020, 1040)
    b.launch(MAIN_TID, 250, 260, 1100, 1150)
    return b


def boundaries() -> ExportBuilder:
    """Calls straddling a range's ends (not inside), one exactly on them (inside), a child starting with its
    parent, overlapping ops and a graph launch of three ops."""
    b = ExportBuilder()
    b.range("r", 50, 100)
    b.range("exact", 200, 300)
    b.launch(MAIN_TID, 90, 110, 120, 130)
    b.launch(MAIN_TID, 40, 60, 140, 150)
    b.launch(MAIN_TID, 200, 300, 310, 320)
    b.range("parent", 400, 500)
    b.range("child", 400, 450)
    b.launch(MAIN_TID, 410, 420, 600, 610)
    b.launch(MAIN_TID, 460, 470, 620, 660, kind="memset")
    b.range("graph", 700, 800)
    cid = b.call(MAIN_TID, 710, 720, api="cudaGraphLaunch")
    for start, end in ((900, 950), (920, 1000), (1100, 1110)):
        b.op(cid, start, end, name="node")
    return b


def unended_and_marks() -> ExportBuilder:
    b = ExportBuilder()
    b.range("never_popped", 0, None)
    b.range("last", 100, 500)
    b.launch(MAIN_TID, 450, 460, 470, 480)
    b.mark("checkpoint", 900)
    return b


def domains_and_handoff() -> ExportBuilder:
    b = ExportBuilder()
    b.domain("io", 5)
    b.range("write", 0, 100, domain_id=5)
    b.range("read", 200, 300, domain_id=5, registered=True)
    b.launch(MAIN_TID, 210, 220, 230, 240)
    b.range("handoff", 400, 600, style="startend", end_tid=OTHER_TID)
    b.launch(MAIN_TID, 450, 460, 470, 480)
    b.range("local", 700, 800, style="startend")
    b.launch(MAIN_TID, 710, 720, 730, 750)
    return b


def identical_bounds() -> ExportBuilder:
    b = ExportBuilder()
    b.range("a", 0, 100)
    b.range("a_again", 0, 100)
    b.range("b", 100, 200)
    b.launch(MAIN_TID, 50, 60, 1000, 1010)
    b.launch(MAIN_TID, 150, 160, 1020, 1050)
    return b


CASES: dict[str, Callable[[], ExportBuilder]] = {f.__name__: f for f in (
    nested, statistics, after_the_range, threads_and_processes, crossing, boundaries, unended_and_marks,
    domains_and_handoff, identical_bounds)}


# -- fixtures: nsys stats and nsysan on every export ----------------------------------------------------------------
@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("parity")
    built = {name: make().write(folder / f"{name}.sqlite") for name, make in CASES.items()}
    return {**REAL, **built}


@pytest.fixture(scope="session")
def theirs(nsys, exports, tmp_path_factory) -> dict[str, dict[str, pl.DataFrame]]:
    root = tmp_path_factory.mktemp("parity_stats")

    def stats(name: str) -> dict[str, pl.DataFrame]:
        path = exports[name]
        reports = REPORTS if name in REAL or _has_kernels(path) else REPORTS[:3]
        return nsys_stats(nsys, path, reports, root / name, schema_overrides=TEXT)
    return Lazy(exports, stats)


def _has_kernels(path: Path) -> bool:
    with nsysan.open(path) as report:
        return report.has("CUPTI_ACTIVITY_KIND_KERNEL")


@pytest.fixture(scope="session")
def ours(exports) -> dict[str, pl.DataFrame]:
    def trace(name: str) -> pl.DataFrame:
        with nsysan.open(exports[name]) as report:
            return range_trace(report)
    return Lazy(exports, trace)


ALL = sorted([*REAL, *CASES])


def mismatches(joined: pl.DataFrame, pairs: dict[str, str], key: list[str], *, tolerance: float = 0.0) -> list[str]:
    """Rows where an nsys column and its nsysan column differ (by more than ``tolerance``; null only with null)."""
    bad = []
    for their, our in pairs.items():
        if tolerance:
            wrong = joined.filter(((pl.col(their) - pl.col(our)).abs() > tolerance)
                                  | (pl.col(their).is_null() != pl.col(our).is_null()))
        else:
            wrong = joined.filter(pl.col(their).ne_missing(pl.col(our)))
        if not wrong.is_empty():
            bad.append(f"nsys {their!r} != nsysan {our!r}:\n{wrong.select(*key, their, our)}")
    return bad


# -- per instance: nvtx_gpu_proj_trace ----------------------------------------------------------------------------------
TRACE_PAIRS = {"Name": "range", "Style": "style", "Projected Start (ns)": "gpu_proj_start_ns",
               "Projected Duration (ns)": "gpu_proj_ns", "Orig Start (ns)": "start_ns",
               "Orig Duration (ns)": "range_ns", "NumGPUOps": "gpu_ops", "PID": "pid", "TID": "tid"}
NESTING_PAIRS = {"Lvl": "level", "ParentId": "parent_id"}


@pytest.mark.parametrize("name", ALL)
def test_every_projected_instance_matches_nvtx_gpu_proj_trace(name, theirs, ours):
    trace = theirs[name]["nvtx_gpu_proj_trace"].filter(pl.col("RangeId").is_not_null())
    mine = ours[name].filter(pl.col("gpu_ops") > 0)
    assert not trace.is_empty()
    assert set(trace["RangeId"]) == set(mine["range_id"]), name
    joined = trace.join(mine, left_on="RangeId", right_on="range_id", how="inner")
    assert joined.height == trace.height == mine.height
    bad = mismatches(joined, TRACE_PAIRS, ["RangeId"])
    # Ranges with identical bounds: nsys leaves their level empty (it cannot order them); nsysan nests the
    # later one inside the earlier one. Every other instance has nsys's level and parent.
    nested_rows = joined.filter(pl.col("Lvl").is_not_null())
    bad += mismatches(nested_rows, NESTING_PAIRS, ["RangeId"])
    assert not bad, f"{name}:\n" + "\n".join(bad)
    assert joined.height - nested_rows.height == (2 if name == "identical_bounds" else 0)


#: Captures of several processes whose threads launch outside every range: nsys 2023.4 writes ONE nameless row
#: for all of them (ddp_resnet18_2gpu: 14538 ops on pid 649 tid 683 where four threads launched 7277, 7277, 290
#: and 290), so there is no per-thread row to compare with.
NAMELESS_MERGED_ACROSS_PROCESSES = {"ddp_resnet18_2gpu"}


@pytest.mark.parametrize("name", sorted(set(ALL) - NAMELESS_MERGED_ACROSS_PROCESSES))
def test_ops_launched_outside_every_range_match_the_nameless_row(name, theirs, exports):
    """nsys lists the GPU work launched outside every projected range as one row per thread without a name
    (a range ended on another thread is not projected, so its launches land there too). nsysan attributes
    those launches to no range: their count and span must be that row's."""
    nameless = theirs[name]["nvtx_gpu_proj_trace"].filter(pl.col("RangeId").is_null())
    with nsysan.open(exports[name]) as report:
        launched = launches(report).with_row_index("launch")
        inside = launch_pairs(report)["launch"].unique()
    outside = (launched.filter(~pl.col("launch").is_in(inside.implode()))
               .group_by(pid=(pl.col("global_tid") // (1 << 24)) % (1 << 24), tid=pl.col("global_tid") % (1 << 24))
               .agg(ops=pl.col("correlation_id").n_unique(), start=pl.col("op_start").min(),
                    duration=pl.col("op_end").max() - pl.col("op_start").min()))
    joined = nameless.join(outside, left_on=["PID", "TID"], right_on=["pid", "tid"], how="full")
    assert joined.height == nameless.height == outside.height, (nameless, outside)
    bad = mismatches(joined, {"NumGPUOps": "ops", "Projected Start (ns)": "start",
                              "Projected Duration (ns)": "duration"}, ["PID", "TID"])
    assert not bad, f"{name}:\n" + "\n".join(bad)
    expected_rows = {"boundaries": 1, "domains_and_handoff": 1}
    if name in CASES:
        assert nameless.height == expected_rows.get(name, 0)


# -- statistics: nvtx_gpu_proj_sum, nvtx_sum, cuda_gpu_kern_sum ------------------------------------------------------------
# nsys rounds Avg and StdDev to 0.1 ns (Med can be x.5), percentages to 0.1 %: half a unit of that, plus float error.
ROUNDING_NS = 0.05 + 1e-6


def _ns(prefix: str, statistics: tuple[str, ...] = ("mean", "p50", "min", "max", "std")) -> list[pl.Expr]:
    return [(pl.col(f"{prefix}_{s}") * 1e6).alias(f"{prefix}_{s}_ns") for s in statistics]


def _single_instance_std(frame: pl.DataFrame, count: str, their_std: str, our_std: str) -> pl.DataFrame:
    """nsys prints StdDev 0 for one instance, nsysan null (undefined): check that, then compare the rest."""
    single = frame.filter(pl.col(count) == 1)
    assert (single[their_std] == 0).all() and single[our_std].is_null().all()
    return frame.with_columns(pl.when(pl.col(count) == 1).then(0.0).otherwise(pl.col(our_std)).alias(our_std))


PROJ_STATS = {"Proj Avg (ns)": "gpu_proj_ms_mean_ns", "Proj Med (ns)": "gpu_proj_ms_p50_ns",
              "Proj Min (ns)": "gpu_proj_ms_min_ns", "Proj Max (ns)": "gpu_proj_ms_max_ns",
              "Proj StdDev (ns)": "gpu_proj_ms_std_ns"}


@pytest.mark.parametrize("name", ALL)
def test_projection_statistics_match_nvtx_gpu_proj_sum(name, theirs, ours):
    summary = theirs[name]["nvtx_gpu_proj_sum"]
    mine = latency_summary(ours[name], by=(), select=EVERYTHING).filter(pl.col("gpu_instances") > 0).with_columns(
        _ns("gpu_proj_ms"))
    joined = summary.join(mine, left_on=["Range", "Style"], right_on=["range", "style"], how="inner")
    assert joined.height == summary.height == mine.height, (summary, mine)
    joined = _single_instance_std(joined, "Range Instances", "Proj StdDev (ns)", "gpu_proj_ms_std_ns")
    bad = mismatches(joined, PROJ_STATS, ["Range", "Style"], tolerance=ROUNDING_NS)
    bad += mismatches(joined, {"Range Instances": "gpu_instances", "Total Proj Time (ns)": "gpu_proj_total_ns",
                               "Total GPU Ops": "gpu_ops_total"}, ["Range", "Style"])
    assert not bad, f"{name}:\n" + "\n".join(bad)


RANGE_STATS = {"Avg (ns)": "range_ms_mean_ns", "Med (ns)": "range_ms_p50_ns", "Min (ns)": "range_ms_min_ns",
               "Max (ns)": "range_ms_max_ns", "StdDev (ns)": "range_ms_std_ns"}


@pytest.mark.parametrize("name", ALL)
def test_range_statistics_match_nvtx_sum(name, theirs, ours, exports):
    summary = theirs[name]["nvtx_sum"]
    mine = latency_summary(ours[name], by=(), select=EVERYTHING).with_columns(_ns("range_ms"))
    joined = summary.join(mine, left_on=["Range", "Style"], right_on=["range", "style"], how="inner")
    assert joined.height == summary.height == mine.height
    with nsysan.open(exports[name]) as report:
        unended = {n for (n,) in report.sql("SELECT DISTINCT name FROM nvtx_ranges WHERE unended").fetchall()}
    # nvtx_sum ends a never-ended range at the last NVTX event of any kind (here the mark at 900), nsysan and
    # nsys's projection reports at the last range timestamp (500): docs/metrics.md.
    if name == "unended_and_marks":
        assert unended == {"never_popped"}
        row = joined.filter(pl.col("Range") == "never_popped").row(0, named=True)
        assert (row["Total Time (ns)"], row["range_total_ns"]) == (900, 500)
    joined = joined.filter(~pl.col("Range").is_in(sorted(unended)))
    joined = _single_instance_std(joined, "Instances", "StdDev (ns)", "range_ms_std_ns")
    bad = mismatches(joined, RANGE_STATS, ["Range", "Style"], tolerance=ROUNDING_NS)
    bad += mismatches(joined, {"Instances": "instances", "Total Time (ns)": "range_total_ns"}, ["Range", "Style"])
    assert not bad, f"{name}:\n" + "\n".join(bad)


KERNEL_STATS = {"Avg (ns)": "gpu_ms_mean_ns", "Med (ns)": "gpu_ms_p50_ns", "Min (ns)": "gpu_ms_min_ns",
                "Max (ns)": "gpu_ms_max_ns", "StdDev (ns)": "gpu_ms_std_ns"}
KERNEL_CASES = sorted([*REAL, "nested", "statistics", "boundaries", "threads_and_processes"])


@pytest.mark.parametrize("names", ["demangled", "short"])
@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernel_statistics_match_cuda_gpu_kern_sum(name, names, theirs, exports):
    summary = theirs[name]["cuda_gpu_kern_sum" if names == "demangled" else "cuda_gpu_kern_sum:base"]
    with nsysan.open(exports[name]) as report:
        mine = kernel_summary(kernel_durations(report, names=names, select=EVERYTHING), by=())
    mine = mine.with_columns(_ns("gpu_ms"))
    joined = summary.join(mine, left_on="Name", right_on="name", how="inner")
    assert joined.height == summary.height == mine.height
    joined = _single_instance_std(joined, "Instances", "StdDev (ns)", "gpu_ms_std_ns")
    bad = mismatches(joined, KERNEL_STATS, ["Name"], tolerance=ROUNDING_NS)
    bad += mismatches(joined, {"Time (%)": "time_pct"}, ["Name"], tolerance=0.05 + 1e-9)
    bad += mismatches(joined, {"Instances": "instances", "Total Time (ns)": "total_ns"}, ["Name"])
    assert not bad, f"{name} ({names}):\n" + "\n".join(bad)


def test_the_hand_built_cases_exercise_what_they_claim(theirs):
    """The statistics case has an even number of projected instances (median between two) and kernels with
    several instances, so a wrong median, standard deviation or share cannot pass by coincidence."""
    proj = theirs["statistics"]["nvtx_gpu_proj_sum"].filter(pl.col("Range") == "step").row(0, named=True)
    assert proj["Range Instances"] == 4 and proj["Proj StdDev (ns)"] > 0
    assert proj["Proj Med (ns)"] not in {proj["Proj Min (ns)"], proj["Proj Max (ns)"]}
    kernels = theirs["statistics"]["cuda_gpu_kern_sum"]
    assert sorted(kernels["Instances"]) == [1, 4, 4] and len(set(kernels["Time (%)"])) == 3
