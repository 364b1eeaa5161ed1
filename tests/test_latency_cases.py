"""Stage latency on tiny hand-built exports whose answers are worked out by hand (docs/metrics.md rules).

Every expected number below is written out with the reason for it; none is copied from nsysan's output.
Times are in ns. Columns compared per range: level, parent, range_ns, gpu_ops, gpu_proj_start_ns,
gpu_proj_ns, gpu_busy_ns.
"""
from __future__ import annotations

import math
import statistics

import numpy as np
import polars as pl
import pytest

import nsysan
from builders import MAIN_PID, MAIN_TID, ExportBuilder
from nsysan.analyses.bandwidth import copy_trace
from nsysan.analyses.kernels import kernel_durations, kernel_summary
from nsysan.analyses.latency import latency_summary, range_trace
from nsysan.selection import Selection, pool_names, select_instances

EVERYTHING = Selection.everything()

OTHER_TID = MAIN_TID + 1
COLUMNS = ("level", "parent", "range_ns", "gpu_ops", "gpu_proj_start_ns", "gpu_proj_ns", "gpu_busy_ns")


def trace_of(builder: ExportBuilder, tmp_path, name: str = "case") -> pl.DataFrame:
    path = builder.write(tmp_path / f"{name}.sqlite")
    with nsysan.open(path) as report:
        return range_trace(report)


def facts(trace: pl.DataFrame, name: str) -> tuple:
    """The COLUMNS of the one instance named ``name``."""
    rows = trace.filter(pl.col("range") == name)
    assert rows.height == 1, f"expected one instance of {name!r}, got {rows.height}: {trace['range'].to_list()}"
    return tuple(rows.select(COLUMNS).row(0))


def test_nested_ranges_count_an_op_for_every_enclosing_range(tmp_path):
    b = ExportBuilder()
    b.range("outer", 0, 1000)
    b.range("mid", 100, 500)
    b.range("inner", 200, 300)
    b.range("sibling", 600, 700)
    b.launch(MAIN_TID, 210, 220, 400, 450)  # K1: call in inner (so also mid, outer)
    b.launch(MAIN_TID, 350, 360, 460, 480)  # K2: call in mid after inner ended (mid, outer)
    b.launch(MAIN_TID, 650, 660, 800, 900, kind="memcpy")  # K3: call in sibling (sibling, outer)
    b.launch(MAIN_TID, 50, 60, 70, 90, kind="memset")  # K4: call in outer only
    trace = trace_of(b, tmp_path)

    assert trace["range"].to_list() == ["outer", "mid", "inner", "sibling"]  # sorted by start
    # outer: K1..K4; first op starts 70, last ends 900 -> 830; busy 20 + 50 + 20 + 100 = 190.
    assert facts(trace, "outer") == (0, None, 1000, 4, 70, 830, 190)
    # mid: K1, K2; 400..480 -> 80; busy 50 + 20 = 70.
    assert facts(trace, "mid") == (1, "outer", 400, 2, 400, 80, 70)
    # inner: K1 only; 400..450.
    assert facts(trace, "inner") == (2, "mid", 100, 1, 400, 50, 50)
    # sibling: K3 only; 800..900.
    assert facts(trace, "sibling") == (1, "outer", 100, 1, 800, 100, 100)
    # parent_id points at the parent's range_id (NVTX rowid: outer 1, mid 2).
    ids = dict(zip(trace["range"], trace["parent_id"]))
    assert ids == {"outer": None, "mid": 1, "inner": 2, "sibling": 1}


def test_range_without_gpu_ops_is_kept_with_null_projection(tmp_path):
    b = ExportBuilder()
    b.range("busy", 0, 100)
    b.range("idle", 200, 300)
    b.launch(MAIN_TID, 10, 20, 30, 40)  # only inside "busy"
    trace = trace_of(b, tmp_path)
    # idle: CPU time 100, no op -> gpu_ops 0, projection null, busy 0.
    assert facts(trace, "idle") == (0, None, 100, 0, None, None, 0)
    assert facts(trace, "busy") == (0, None, 100, 1, 30, 10, 10)

    with nsysan.open(tmp_path / "case.sqlite") as report:
        summary = latency_summary(range_trace(report).with_columns(report=pl.lit("r")), select=EVERYTHING)
    idle = summary.filter(pl.col("range") == "idle").row(0, named=True)
    # Still an instance, but not a GPU instance: GPU statistics are over instances with ops only.
    assert (idle["instances"], idle["gpu_instances"], idle["gpu_ops_total"]) == (1, 0, 0)
    assert idle["range_ms_mean"] == pytest.approx(100 / 1e6)
    assert idle["gpu_proj_ms_mean"] is None and idle["gpu_proj_ms_max"] is None


def test_export_without_cuda_trace_gives_cpu_times_only(tmp_path):
    b = ExportBuilder()
    b.range("a", 0, 100)
    b.range("b", 10, 30)
    trace = trace_of(b, tmp_path)
    # No CUPTI tables at all: every range has gpu_ops 0 and a null projection.
    assert facts(trace, "a") == (0, None, 100, 0, None, None, 0)
    assert facts(trace, "b") == (1, "a", 20, 0, None, None, 0)


def test_op_running_after_its_range_ended_still_belongs_to_it(tmp_path):
    b = ExportBuilder()
    b.range("submit", 0, 100)
    b.range("later", 400, 900)  # the op runs while "later" is open, but was launched in "submit"
    b.launch(MAIN_TID, 10, 20, 500, 800)
    trace = trace_of(b, tmp_path)
    # submit: 1 op at 500..800 -> projection starts 400 ns after the range ended and is 300 long.
    assert facts(trace, "submit") == (0, None, 100, 1, 500, 300, 300)
    # later: no call inside it -> nothing, despite the op running during it.
    assert facts(trace, "later") == (0, None, 500, 0, None, None, 0)


def test_call_on_another_thread_does_not_count(tmp_path):
    b = ExportBuilder()
    b.range("a", 0, 100, tid=MAIN_TID)
    b.range("b", 0, 100, tid=OTHER_TID)
    b.launch(OTHER_TID, 10, 20, 30, 40)  # call on thread B, at a time range "a" is open on thread A
    b.launch(MAIN_TID, 50, 60, 60, 70)  # call on thread A
    trace = trace_of(b, tmp_path)
    # a: only its own thread's call -> op 60..70.
    assert facts(trace, "a") == (0, None, 100, 1, 60, 10, 10)
    # b: only thread B's call -> op 30..40. Both top level: different threads do not nest.
    assert facts(trace, "b") == (0, None, 100, 1, 30, 10, 10)
    assert dict(zip(trace["range"], trace["tid"])) == {"a": MAIN_TID, "b": OTHER_TID}


def test_two_processes_reusing_a_correlation_id(tmp_path):
    b = ExportBuilder()
    # Same tid number and same correlationId 7 in both processes.
    b.range("p1", 0, 100, pid=100, tid=101)
    b.range("p2", 0, 100, pid=200, tid=101)
    b.call(101, 10, 20, pid=100, correlation_id=7)
    b.call(101, 50, 60, pid=200, correlation_id=7)
    b.op(7, 30, 40, pid=100)
    b.op(7, 200, 260, pid=200, kind="memcpy")
    trace = trace_of(b, tmp_path)
    # Each op ties to its own process's call: p1 gets 30..40, p2 gets 200..260.
    assert facts(trace, "p1") == (0, None, 100, 1, 30, 10, 10)
    assert facts(trace, "p2") == (0, None, 100, 1, 200, 60, 60)
    assert sorted(trace["pid"].to_list()) == [100, 200]


def test_start_end_ranges_crossing_a_push_pop_range(tmp_path):
    b = ExportBuilder()
    b.range("step", 100, 200)  # push/pop
    b.range("async_io", 150, 300, style="startend")  # starts inside step, ends after it: crossing
    b.range("inner", 210, 280)  # push/pop inside async_io (after step ended)
    b.launch(MAIN_TID, 120, 130, 1000, 1010)  # C1: step only
    b.launch(MAIN_TID, 160, 170, 1020, 1040)  # C2: step and async_io
    b.launch(MAIN_TID, 250, 260, 1100, 1150)  # C3: async_io and inner
    trace = trace_of(b, tmp_path)
    # step: C1, C2 -> 1000..1040 = 40; busy 10 + 20 = 30. Neither crossing range contains the other.
    assert facts(trace, "step") == (0, None, 100, 2, 1000, 40, 30)
    # async_io: C2, C3 -> 1020..1150 = 130; busy 20 + 50 = 70.
    assert facts(trace, "async_io") == (0, None, 150, 2, 1020, 130, 70)
    # inner: C3 -> 1100..1150; its parent is async_io (the only range containing it).
    assert facts(trace, "inner") == (1, "async_io", 70, 1, 1100, 50, 50)
    assert dict(zip(trace["range"], trace["style"])) == {
        "step": "PushPop", "async_io": "StartEnd", "inner": "PushPop"}


def test_range_inside_two_crossing_ranges_counts_for_both(tmp_path):
    b = ExportBuilder()
    b.range("step", 100, 200)
    b.range("async_io", 150, 300, style="startend")
    b.range("kernel_launch", 160, 190)  # inside step and inside async_io
    b.launch(MAIN_TID, 170, 180, 400, 420)
    trace = trace_of(b, tmp_path)
    # The one op counts for all three ranges: each contains the call 170..180.
    for name in ("step", "async_io", "kernel_launch"):
        row = trace.filter(pl.col("range") == name).row(0, named=True)
        assert (row["gpu_ops"], row["gpu_proj_start_ns"], row["gpu_proj_ns"]) == (1, 400, 20), name
    # Documented difference from nsys (docs/metrics.md): with crossing ranges the parent is the
    # latest-starting range that contains the instance (async_io), not the tightest one (step).
    assert facts(trace, "kernel_launch")[:2] == (1, "async_io")


def test_start_end_range_ended_on_another_thread_gets_cpu_time_only(tmp_path):
    b = ExportBuilder()
    b.range("handoff", 400, 600, style="startend", end_tid=OTHER_TID)
    b.range("local", 700, 800, style="startend")  # started and ended on the main thread
    b.launch(MAIN_TID, 450, 460, 470, 480)  # inside handoff's time, on the thread that started it
    b.launch(MAIN_TID, 710, 720, 730, 750)
    trace = trace_of(b, tmp_path)
    # handoff: 200 ns CPU time, no projection, no nesting (level 0, no parent).
    assert facts(trace, "handoff") == (0, None, 200, 0, None, None, 0)
    assert facts(trace, "local") == (0, None, 100, 1, 730, 20, 20)


def test_domain_ranges_are_named_domain_colon_message(tmp_path):
    b = ExportBuilder()
    b.domain("io", 5, pid=100)
    b.domain("net", 5, pid=200, tid=201)  # same domain id, other process, other name
    b.range("write", 0, 100, domain_id=5)
    b.range("read", 200, 300, domain_id=5, registered=True)  # name through StringIds
    b.range("plain", 400, 500)  # default domain (0)
    b.range("send", 0, 100, domain_id=5, pid=200, tid=201)
    trace = trace_of(b, tmp_path)
    # Domain-create events are not ranges; the four ranges are named per their process's domain.
    assert sorted(trace["range"].to_list()) == ["io:read", "io:write", "net:send", "plain"]


def test_call_straddling_the_range_boundary_is_not_inside(tmp_path):
    b = ExportBuilder()
    b.range("r", 50, 100)
    b.range("exact", 200, 300)
    b.launch(MAIN_TID, 90, 110, 120, 130)  # starts in r, ends after r: not inside
    b.launch(MAIN_TID, 40, 60, 140, 150)  # starts before r: not inside
    b.launch(MAIN_TID, 200, 300, 310, 320)  # exactly the range's bounds: inside (closed interval)
    # Touching siblings (one ends where the next starts) are matched as crossing ranges: a zero-length call at
    # that instant lies inside both, as nsys stats nvtx_gpu_proj_sum (2023.4) counts it.
    b.range("left", 400, 500)
    b.range("right", 500, 600)
    b.launch(MAIN_TID, 500, 500, 510, 530)
    trace = trace_of(b, tmp_path)
    assert facts(trace, "r") == (0, None, 50, 0, None, None, 0)
    assert facts(trace, "exact") == (0, None, 100, 1, 310, 10, 10)
    assert facts(trace, "left") == facts(trace, "right") == (0, None, 100, 1, 510, 20, 20)


def test_overlapping_ops_busy_is_the_union(tmp_path):
    b = ExportBuilder()
    b.range("r", 0, 100)
    b.launch(MAIN_TID, 10, 11, 100, 200)  # A
    b.launch(MAIN_TID, 20, 21, 150, 250, kind="memcpy")  # B overlaps A
    b.launch(MAIN_TID, 30, 31, 110, 120, kind="memset")  # C inside A
    b.launch(MAIN_TID, 40, 41, 300, 310)  # D after a gap
    trace = trace_of(b, tmp_path)
    # projection 100..310 = 210; union [100,250] + [300,310] = 160 < sum of lengths 100+100+10+10 = 220.
    assert facts(trace, "r") == (0, None, 100, 4, 100, 210, 160)


def test_graph_launch_with_several_ops_counts_once(tmp_path):
    b = ExportBuilder()
    b.range("graph", 0, 100)
    cid = b.call(MAIN_TID, 10, 20, api="cudaGraphLaunch")
    b.op(cid, 30, 40, name="node_a")
    b.op(cid, 40, 60, name="node_b")
    b.op(cid, 70, 80, name="node_c")
    trace = trace_of(b, tmp_path)
    # 3 ops, 1 correlation id -> gpu_ops 1; projection 30..80 = 50; busy 10 + 20 + 10 = 40.
    assert facts(trace, "graph") == (0, None, 100, 1, 30, 50, 40)


def test_identical_and_back_to_back_ranges(tmp_path):
    b = ExportBuilder()
    b.range("a", 0, 100)
    b.range("a_again", 0, 100)  # identical bounds: the earlier range contains the later one
    b.range("b", 100, 200)  # starts where a ends: siblings, not nested
    b.launch(MAIN_TID, 50, 60, 1000, 1010)
    b.launch(MAIN_TID, 150, 160, 1020, 1050)
    trace = trace_of(b, tmp_path)
    assert facts(trace, "a") == (0, None, 100, 1, 1000, 10, 10)
    assert facts(trace, "a_again") == (1, "a", 100, 1, 1000, 10, 10)
    assert facts(trace, "b") == (0, None, 100, 1, 1020, 30, 30)


def test_identical_bounds_nest_by_range_id_whatever_order_duckdb_returns_rows_in(tmp_path, monkeypatch):
    # DuckDB returns a large table's rows in no set order (its scan is parallel): the earlier range must
    # still contain the later one.
    b = ExportBuilder()
    b.range("a", 0, 100)
    b.range("a_again", 0, 100)
    b.launch(MAIN_TID, 50, 60, 1000, 1010)
    frame = nsysan.load.Report.frame
    monkeypatch.setattr(nsysan.load.Report, "frame", lambda self, text, params=None: frame(self, text, params)[::-1])
    trace = trace_of(b, tmp_path)
    assert facts(trace, "a") == (0, None, 100, 1, 1000, 10, 10)
    assert facts(trace, "a_again") == (1, "a", 100, 1, 1000, 10, 10)


def test_child_starting_at_the_same_instant_as_its_parent(tmp_path):
    b = ExportBuilder()
    b.range("parent", 0, 100)
    b.range("child", 0, 50)  # same start, ends earlier: nested
    b.launch(MAIN_TID, 10, 20, 200, 210)  # in child (and parent)
    b.launch(MAIN_TID, 60, 70, 220, 260)  # in parent only
    trace = trace_of(b, tmp_path)
    assert facts(trace, "parent") == (0, None, 100, 2, 200, 60, 50)  # 200..260; busy 10 + 40
    assert facts(trace, "child") == (1, "parent", 50, 1, 200, 10, 10)


def test_unended_range_ends_at_the_last_nvtx_timestamp(tmp_path):
    b = ExportBuilder()
    b.range("never_popped", 0, None)
    b.range("last", 100, 500)
    b.launch(MAIN_TID, 450, 460, 470, 480)
    trace = trace_of(b, tmp_path)
    # Capture end = last NVTX timestamp = 500, so never_popped lasts 500 and contains "last".
    assert facts(trace, "never_popped") == (0, None, 500, 1, 470, 10, 10)
    assert facts(trace, "last") == (1, "never_popped", 400, 1, 470, 10, 10)


# -- warm-up exclusion, name merging ---------------------------------------------------------------------

def _warmup_export(path):
    b = ExportBuilder()
    for i, t0 in enumerate((0, 200, 400)):
        b.range("warmup_0" if i == 0 else f"batch_{i}", t0, t0 + 100)
        b.range("forward", t0 + 10, t0 + 60)
        b.range("gemm_stage", t0 + 20, t0 + 30)  # grandchild of warmup_0 / batch_i
    b.range("forward", 600, 650)  # a top-level forward
    return b.write(path)


def _instances(trace):
    return sorted(zip(trace["range"].to_list(), trace["start_ns"].to_list()))


def test_exclude_within_drops_matching_ranges_and_everything_nested_in_them(tmp_path):
    with nsysan.open(_warmup_export(tmp_path / "w.sqlite")) as report:
        trace = range_trace(report)
    kept = select_instances(trace, Selection(exclude_within="warmup_*"))
    # warmup_0 (named like it), its forward (child) and gemm_stage (grandchild) are gone.
    assert _instances(kept) == [("batch_1", 200), ("batch_2", 400), ("forward", 210), ("forward", 410),
                                ("forward", 600), ("gemm_stage", 220), ("gemm_stage", 420)]
    several = select_instances(trace, Selection(exclude_within=["warmup_*", "batch_2"]))
    assert _instances(several) == [("batch_1", 200), ("forward", 210), ("forward", 600), ("gemm_stage", 220)]
    # A pattern that matches nothing keeps everything.
    assert select_instances(trace, Selection(exclude_within="nothing_*")).height == trace.height == 10
    assert select_instances(trace, EVERYTHING).height == 10
    # The default selection is the warm-up rule above.
    assert _instances(select_instances(trace)) == _instances(kept)


def test_skip_first_drops_the_first_instances_of_each_name(tmp_path):
    with nsysan.open(_warmup_export(tmp_path / "w.sqlite")) as report:
        trace = range_trace(report)
    kept = select_instances(trace, Selection(exclude_within=(), skip_first=1))
    # Names with one instance vanish; forward loses the one at 10, gemm_stage the one at 20.
    assert _instances(kept) == [("forward", 210), ("forward", 410), ("forward", 600),
                                ("gemm_stage", 220), ("gemm_stage", 420)]
    assert _instances(select_instances(trace, Selection(exclude_within=(), skip_first=3))) == [("forward", 600)]


def test_exclusions_apply_per_report(tmp_path):
    a = _warmup_export(tmp_path / "a.sqlite")
    b = _warmup_export(tmp_path / "b.sqlite")
    trace = nsysan.latency_trace([a, b], select=Selection(exclude_within="warmup_*", skip_first=1)).frame
    # Per report: after dropping warmup_0's subtree, the first batch_1/batch_2/forward/gemm_stage go.
    expected = [("forward", 410), ("forward", 600), ("gemm_stage", 420)]
    for name in ("a", "b"):
        assert _instances(trace.filter(pl.col("report") == name)) == expected


def _same_name_reports(folder):
    """A sweep often holds one run.sqlite per run folder; each report's ranges must stay its own."""
    a = ExportBuilder()
    a.range("warmup_0", 0, 100)
    a.range("forward", 10, 50)  # inside warmup_0
    a.write(folder / "gpu0" / "run.sqlite")
    b = ExportBuilder()
    b.range("forward", 0, 100)  # top level, with the same range_id (1) as warmup_0 in the other report
    b.range("other", 200, 300)
    b.write(folder / "gpu1" / "run.sqlite")
    return nsysan.collect([folder])


def test_exclusion_with_two_reports_of_the_same_file_name(tmp_path):
    kept = nsysan.latency_trace(_same_name_reports(tmp_path), select=Selection(exclude_within="warmup_*")).frame
    # gpu0's warmup_0 and the forward inside it go; gpu1's forward and other stay.
    assert _instances(kept) == [("forward", 0), ("other", 200)]


def test_reports_of_the_same_file_name_are_not_pooled(tmp_path):
    trace = nsysan.latency_trace(_same_name_reports(tmp_path), select=EVERYTHING).frame
    assert trace.height == 4
    # Two files, so two reports: a per-report summary must not pool them under one name.
    assert trace["report"].n_unique() == 2


def test_merge_numbered_names(tmp_path):
    with nsysan.open(_warmup_export(tmp_path / "w.sqlite")) as report:
        trace = range_trace(report)
    merged = pool_names(trace)
    assert sorted(set(merged["range"].to_list())) == ["batch_*", "forward", "gemm_stage", "warmup_*"]
    # The parent column is renamed too.
    assert sorted(set(merged["parent"].drop_nulls().to_list())) == ["batch_*", "forward", "warmup_*"]
    summary = latency_summary(trace.with_columns(report=pl.lit("w")), select=Selection(exclude_within=()))
    assert dict(zip(summary["range"], summary["instances"])) == {
        "warmup_*": 1, "forward": 4, "gemm_stage": 3, "batch_*": 2}
    assert pool_names(trace, EVERYTHING).equals(trace)  # merging off: names as recorded
    frame = pl.DataFrame({"range": ["layer3", "step-7", "io:write", "v.12", "x"], "parent": [None] * 5},
                         schema_overrides={"parent": pl.String})
    assert pool_names(frame)["range"].to_list() == ["layer*", "step-*", "io:write", "v.*", "x"]


# -- statistics ----------------------------------------------------------------------------------------------

def test_latency_summary_statistics(tmp_path):
    ms = 1_000_000
    durations = [1 * ms, 2 * ms, 3 * ms, 4 * ms, 10 * ms]
    gpu = {0: 500_000, 1: 1_500_000, 3: 2_000_000}  # instance -> its op's length; instances 2 and 4 have none
    b = ExportBuilder()
    t = 0
    for i, d in enumerate(durations):
        b.range("step", t, t + d)
        if i in gpu:
            b.launch(MAIN_TID, t + 10, t + 20, t + 100, t + 100 + gpu[i])
        t += d + ms
    b.range("once", t, t + 7 * ms)
    path = b.write(tmp_path / "stats.sqlite")
    summary = nsysan.latency(path).frame
    step = summary.filter(pl.col("range") == "step").row(0, named=True)

    x = np.array(durations) / 1e6  # ms
    g = np.array(list(gpu.values())) / 1e6
    assert step["report"] == "stats"
    assert (step["instances"], step["gpu_instances"], step["gpu_ops_total"]) == (5, 3, 3)
    assert step["range_total_ns"] == 20 * ms
    assert step["gpu_proj_total_ns"] == step["gpu_busy_total_ns"] == 4 * ms
    for prefix, values in (("range_ms", x), ("gpu_proj_ms", g), ("gpu_busy_ms", g)):
        assert step[f"{prefix}_mean"] == pytest.approx(values.mean())
        for q in (50, 95, 99):
            assert step[f"{prefix}_p{q}"] == pytest.approx(np.percentile(values, q))  # linear interpolation
        assert step[f"{prefix}_min"] == pytest.approx(values.min())
        assert step[f"{prefix}_max"] == pytest.approx(values.max())
        assert step[f"{prefix}_std"] == pytest.approx(statistics.stdev(values.tolist()))
    # Worked by hand for the CPU times 1, 2, 3, 4, 10 ms: p95 = 4 + 0.8 * (10 - 4), p99 = 4 + 0.96 * 6.
    assert (step["range_ms_mean"], step["range_ms_p50"]) == pytest.approx((4.0, 3.0))
    assert (step["range_ms_p95"], step["range_ms_p99"]) == pytest.approx((8.8, 9.76))
    assert step["range_ms_std"] == pytest.approx(math.sqrt((9 + 4 + 1 + 0 + 36) / 4))

    once = summary.filter(pl.col("range") == "once").row(0, named=True)
    # One instance: every statistic is 7 ms except std, which is undefined (null).
    assert once["range_ms_p95"] == pytest.approx(7.0) and once["range_ms_std"] is None
    # Rows are in order of first appearance in the report.
    assert summary["range"].to_list() == ["step", "once"]


def test_latency_pools_instances_of_a_group(tmp_path):
    paths = []
    for variant, d in (("a", 1_000_000), ("b", 3_000_000)):
        b = ExportBuilder()
        b.range("forward", 0, d)
        paths.append(b.write(tmp_path / f"pipeline_gpu0_numa0_vit1x2x3_{variant}.sqlite"))
    pooled = nsysan.latency(paths, by=["model"]).frame
    row = pooled.row(0, named=True)
    # Both reports belong to model vit1x2x3: instances 1 ms and 3 ms pooled -> mean 2, std sqrt(2).
    assert (pooled.height, row["model"], row["instances"]) == (1, "vit1x2x3", 2)
    assert (row["range_ms_mean"], row["range_ms_std"]) == pytest.approx((2.0, math.sqrt(2)))


# -- kernels ---------------------------------------------------------------------------------------------

def test_kernel_summary_on_a_hand_built_export(tmp_path):
    b = ExportBuilder()
    b.launch(MAIN_TID, 0, 1, 10, 110, name="gemm<float>(int)")  # 100 ns
    b.launch(MAIN_TID, 2, 3, 200, 500, name="gemm<float>(int)")  # 300 ns
    b.launch(MAIN_TID, 4, 5, 600, 650, name="relu(float*)")  # 50 ns
    b.launch(MAIN_TID, 6, 7, 700, 9_000, kind="memcpy")  # not a kernel
    path = b.write(tmp_path / "k.sqlite")
    summary = nsysan.kernels(path).frame
    assert summary["name"].to_list() == ["gemm<float>(int)", "relu(float*)"]  # most total time first
    gemm, relu = summary.rows(named=True)
    assert (gemm["report"], gemm["instances"], gemm["total_ns"]) == ("k", 2, 400)
    assert (relu["instances"], relu["total_ns"]) == (1, 50)
    # time_pct: 400 / 450 and 50 / 450 of the summed kernel time.
    assert (gemm["time_pct"], relu["time_pct"]) == pytest.approx((100 * 400 / 450, 100 * 50 / 450))
    assert (gemm["gpu_ms_mean"], gemm["gpu_ms_min"], gemm["gpu_ms_max"]) == pytest.approx((2e-4, 1e-4, 3e-4))
    assert gemm["gpu_ms_p95"] == pytest.approx(1e-4 + 0.95 * 2e-4)
    assert gemm["gpu_ms_std"] == pytest.approx(statistics.stdev([1e-4, 3e-4]))
    assert relu["gpu_ms_std"] is None

    short = nsysan.kernels(path, names="short").frame
    assert dict(zip(short["name"], short["total_ns"])) == {"gemm": 400, "relu": 50}


def test_kernels_of_a_report_without_kernels_is_a_clear_error(tmp_path):
    b = ExportBuilder()
    b.range("a", 0, 1)
    path = b.write(tmp_path / "nvtx_only.sqlite")
    runs = nsysan.collect([path])
    result = nsysan.kernels(runs)
    assert result.frame.is_empty() and result.analysed == 0
    assert len(result.failures) == 1
    assert str(path) in result.failures[0].reason and "no CUDA kernels" in result.failures[0].reason
    assert "needed for the kernel summary" in result.failures[0].reason
    # The collection is not changed: analysing it again reports the failure once again, not twice.
    assert len(nsysan.kernels(runs).failures) == 1


def test_cuda_calls_without_gpu_ops_give_no_projection(tmp_path):
    b = ExportBuilder()
    b.range("sync", 0, 100)
    b.call(MAIN_TID, 10, 90, api="cudaDeviceSynchronize")  # a CUDA call that launched nothing
    trace = trace_of(b, tmp_path)
    assert facts(trace, "sync") == (0, None, 100, 0, None, None, 0)


def test_work_launched_in_warmup_is_left_out_of_kernels_and_copies(tmp_path):
    b = ExportBuilder()
    b.range("warmup_0", 0, 100)
    b.range("forward", 10, 90)  # nested in warm-up: its launches are warm-up work too
    b.launch(MAIN_TID, 20, 30, 200, 210, name="gemm")
    b.launch(MAIN_TID, 5, 8, 220, 240, name="relu")  # in warmup_0 itself
    b.launch(MAIN_TID, 40, 50, 250, 260, kind="memcpy")
    b.range("batch_1", 300, 400)
    b.launch(MAIN_TID, 310, 320, 500, 530, name="gemm")
    b.launch(MAIN_TID, 330, 340, 540, 550, kind="memcpy")
    b.launch(MAIN_TID, 1000, 1010, 1100, 1104, name="relu")  # outside every range: kept
    path = b.write(tmp_path / "warm.sqlite")
    with nsysan.open(path) as report:
        default = kernel_durations(report)
        everything = kernel_durations(report, select=EVERYTHING)
        copies = copy_trace(report)
        all_copies = copy_trace(report, select=EVERYTHING)
    assert default.columns == ["name", "start_ns", "duration_ns", "device_id", "stream_id", "pid"]
    assert default.rows() == [("gemm", 500, 30, 0, 7, MAIN_PID), ("relu", 1100, 4, 0, 7, MAIN_PID)]
    assert default.schema["pid"] == pl.Int64
    assert sorted(everything["start_ns"].to_list()) == [200, 220, 500, 1100]
    assert copies["start_ns"].to_list() == [540] and all_copies["start_ns"].to_list() == [250, 540]
    summary = kernel_summary(default, by=())
    assert dict(zip(summary["name"], summary["total_ns"])) == {"gemm": 30, "relu": 4}
    # A selection whose warm-up pattern matches nothing keeps every kernel.
    with nsysan.open(path) as report:
        assert kernel_durations(report, select=Selection(exclude_within="nothing_*")).height == 4


def test_summary_columns_and_kernel_order_on_ties(tmp_path):
    b = ExportBuilder()
    b.range("step", 0, 100)
    b.launch(MAIN_TID, 10, 20, 100, 150, name="a_kernel")  # a_kernel: 2 x 50 = 100 ns
    b.launch(MAIN_TID, 20, 30, 200, 250, name="a_kernel")
    b.launch(MAIN_TID, 30, 40, 300, 400, name="c_kernel")  # c_kernel, b_kernel: 1 x 100 ns each
    b.launch(MAIN_TID, 40, 50, 500, 600, name="b_kernel")
    first = b.write(tmp_path / "a.sqlite")
    second = ExportBuilder()
    second.range("step", 0, 10)
    second.launch(MAIN_TID, 1, 2, 5, 1005, name="z_kernel")
    second = second.write(tmp_path / "b.sqlite")
    kernels = nsysan.kernels([second, first], select=EVERYTHING).frame
    # Per report in report order; within one, most total time first, then fewer instances, then by name.
    assert kernels.select("report", "name").rows() == [("a", "b_kernel"), ("a", "c_kernel"), ("a", "a_kernel"),
                                                       ("b", "z_kernel")]
    summary = nsysan.latency([first, second], select=EVERYTHING).frame
    assert summary.columns == [
        "report", "range", "style", "instances", "range_total_ns", "gpu_instances", "gpu_proj_total_ns",
        "gpu_ops_total", "gpu_busy_total_ns",
        *[f"{prefix}_{s}" for prefix in ("range_ms", "gpu_proj_ms", "gpu_busy_ms")
          for s in ("mean", "p50", "p95", "p99", "min", "max", "std")]]
    assert summary.select("report", "range").rows() == [("a", "step"), ("b", "step")]


def test_ranges_whose_gpu_work_other_threads_launched_are_named_once_and_a_process_without_calls_is_not(tmp_path):
    """The note that suggests attribution='process': fwd's own thread launched nothing while another thread of
    its process launched a kernel inside it; "idle" runs in a process that made no CUDA call at all."""
    b = ExportBuilder()
    b.range("fwd", 0, 1000, pid=100, tid=101)
    b.launch(102, 100, 110, 200, 300, pid=100)
    b.range("idle", 0, 1000, pid=200, tid=201)
    path = b.write(tmp_path / "foreign.sqlite")
    result = nsysan.latency_trace(path)
    assert result.ok, result.failures
    named = [n for n in result.notes if "same-thread rule" in n]
    assert len(named) == 1 and f"{path}: fwd:" in named[0] and "idle" not in named[0], result.notes
    assert "launched 1 GPU op(s)" in named[0]
    process = nsysan.latency_trace(path, attribution="process").frame
    assert process.filter(pl.col("range") == "fwd")["gpu_proj_ns"].to_list() == [100]
    # Analyses built on the instances under the default rule say it too (comparisons, NUMA).
    from nsysan.analyses.compare import stage_observations

    with nsysan.open(path) as report, pytest.warns(nsysan.NsysanWarning, match="fwd: under nsys's same-thread rule"):
        stage_observations(report)


def test_only_launches_of_other_threads_of_the_process_inside_a_range_of_little_gpu_time_are_named(tmp_path):
    """Each range of thread 7 of process 101 (odd: its pid bit sits next to the tid bits) tests one edge of the
    note: its own launches never count, nor another process's; a launch at the range's end does; a range's GPU
    time of exactly 1 % is not under 1 %; a 1 ns range with no GPU time is."""
    b = ExportBuilder()
    pid, other_pid = 101, 102
    b.range("own_only", 0, 1_000_000, pid=pid, tid=7)
    b.launch(7, 100, 110, 200, 210, pid=pid)  # 10 ns of GPU time in 1 ms: under 1 %, but its own
    b.launch(7, 500, 510, 600, 700, pid=other_pid)  # same tid, another process
    b.range("edge", 2_000_000, 2_001_000, pid=pid, tid=7)
    b.launch(8, 2_001_000, 2_001_010, 2_001_100, 2_001_200, pid=pid)  # at the range's very end
    b.range("tiny", 3_000_000, 3_000_001, pid=pid, tid=7)
    b.launch(8, 3_000_000, 3_000_005, 3_000_100, 3_000_200, pid=pid)
    b.launch(8, 3_000_001, 3_000_006, 3_000_300, 3_000_400, pid=pid)  # two others: named before edge's one
    b.range("one_pct", 4_000_000, 4_001_000, pid=pid, tid=7)
    b.launch(7, 4_000_010, 4_000_020, 4_000_100, 4_000_110, pid=pid)  # exactly 1 % of 1000 ns
    b.launch(8, 4_000_500, 4_000_510, 4_000_600, 4_000_700, pid=pid)
    b.range("busy", 5_000_000, 5_001_000, pid=pid, tid=7)
    b.launch(7, 5_000_010, 5_000_020, 5_000_100, 5_000_600, pid=pid)
    b.launch(8, 5_000_500, 5_000_510, 5_000_700, 5_000_800, pid=pid)
    b.range("own_later", 6_000_000, 7_000_000, pid=pid, tid=7)  # like own_only, after the other thread's launches
    b.launch(7, 6_000_100, 6_000_110, 6_000_200, 6_000_210, pid=pid)
    path = b.write(tmp_path / "threads.sqlite")
    result = nsysan.latency_trace(path)
    named = [n.removeprefix(f"{path}: ").split(":")[0] for n in result.notes if "same-thread rule" in n]
    assert named == ["tiny", "edge"], result.notes
    assert "in 1 of 1 instance(s), yet other threads of its process launched 2 GPU op(s)" in result.notes[0]


def test_the_stage_of_an_op_is_its_deepest_range_then_the_latest_to_start(tmp_path):
    """Ranges are written out of order so that no tie-break falls out of the ids: "inner" shares outer's start
    and is written first; of two touching ranges at the same level the later one is written first, and a
    zero-length call where they meet lies inside both."""
    from nsysan.attribution import op_stages, range_names

    b = ExportBuilder()
    b.range("inner", 0, 200)
    b.range("outer", 0, 1000)
    b.launch(MAIN_TID, 50, 60, 300, 400)  # inside inner (level 1) and outer (level 0)
    b.range("second", 2100, 2200)
    b.range("first", 2000, 2100)
    b.launch(MAIN_TID, 2100, 2100, 2300, 2400)  # where first ends and second starts
    with nsysan.open(b.write(tmp_path / "stages.sqlite")) as report:
        names = dict(range_names(report).select("range_id", "name").iter_rows())
        stages = op_stages(report).sort("correlation_id")
        assert [names[r] for r in stages["stage_range_id"]] == ["inner", "second"]


def test_ranges_with_identical_bounds_both_count_the_op_launched_inside(tmp_path):
    """Two ranges opened and closed at the same instants nest (the earlier contains the later): the op launched
    inside counts for both, whichever of them the as-of join lands on."""
    b = ExportBuilder()
    b.range("outer", 0, 100)
    b.range("inner", 0, 100)
    b.launch(MAIN_TID, 10, 20, 30, 40)
    trace = trace_of(b, tmp_path)
    assert trace.sort("range_id").select("range", "level", "gpu_ops", "gpu_proj_ns").rows() == [
        ("outer", 0, 1, 10), ("inner", 1, 1, 10)]


def test_a_capture_without_cuda_trace_keeps_the_gpu_columns_typed(tmp_path):
    b = ExportBuilder()
    b.range("batch_0", 0, 100)
    trace = trace_of(b, tmp_path)
    assert trace.schema["gpu_proj_start_ns"] == trace.schema["gpu_proj_ns"] == pl.Int64
    assert trace["gpu_proj_ns"].to_list() == [None] and trace["gpu_ops"].to_list() == [0]


def test_warm_up_that_no_cuda_trace_ties_to_gpu_work_is_said_once_and_nothing_is_left_out(tmp_path):
    b = ExportBuilder()
    b.range("warmup_0", 0, 100)
    b.range("step_1", 200, 300)
    b.op(1, 10, 20, name="gemm")  # no CUDA API trace: no call to tie it to either range
    b.op(2, 210, 220, name="gemm")
    path = b.write(tmp_path / "untied.sqlite")
    result = nsysan.kernels(path)
    assert result.frame["instances"].to_list() == [2]
    said = (f"{path}: GPU work launched inside warmup_* cannot be left out: no CUDA API trace "
            "(CUPTI_ACTIVITY_KIND_RUNTIME) ties GPU work to NVTX ranges (--all-instances keeps everything without "
            "this warning)")
    assert result.notes.count(said) == 1, result.notes
