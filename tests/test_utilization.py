"""nsysan utilization: hand-built overlaps worked out by hand, interval maths against a brute-force count,
kernel time reconciled live with ``nsys stats -r cuda_gpu_kern_sum``, and the sample sweep's shape
(small ViTs launch-bound in their forward pass, the largest one markedly busier).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import nsysan
from builders import MAIN_TID, ExportBuilder
from support import nsys_stats
from nsysan import defaults, intervals
from nsysan.analyses.utilization import gpu_utilization, top_kernels, utilization_summary
from nsysan.cli import app
from nsysan.selection import Selection

SAMPLES = {path.name.removesuffix(".sqlite"): path for path in nsysan.sample_paths()}


def launch(b: ExportBuilder, call: tuple[int, int], op: tuple[int, int], *, kind: str = "kernel",
           name: str = "kernel", stream: int = 7) -> None:
    api = {"kernel": "cudaLaunchKernel", "memcpy": "cudaMemcpyAsync", "memset": "cudaMemsetAsync"}[kind]
    cid = b.call(MAIN_TID, *call, api=api)
    b.op(cid, *op, kind=kind, name=name, stream=stream, nbytes=1 << 20)


def pipeline(tmp_path: Path, name: str = "case") -> Path:
    """One warm-up and one measured batch; every number in the tests below is derived from these lines.

    Kernels: W [30,40) | K1 [100,200) s7, K2 [150,300) s8 (overlaps K1) | K3 [420,430), K4 [436,440) |
    K5 [700,705). Copies: M1 memcpy [250,400) s9 (overlaps K2) | S memset [600,650). Capture: 0..1000.
    """
    b = ExportBuilder()
    b.range("warmup_0", 0, 50)
    launch(b, (10, 20), (30, 40), name="warm")
    b.range("batch_1", 50, 1000)
    b.range("forward", 60, 500)
    launch(b, (70, 80), (100, 200), name="gemm", stream=7)
    launch(b, (80, 90), (150, 300), name="gemm", stream=8)
    launch(b, (90, 95), (250, 400), kind="memcpy", stream=9)
    launch(b, (100, 105), (420, 430), name="relu")
    launch(b, (110, 115), (436, 440), name="relu")
    b.range("d2h", 500, 900)
    launch(b, (510, 520), (600, 650), kind="memset")
    launch(b, (520, 530), (700, 705), name="relu")
    return b.write(tmp_path / f"{name}.sqlite")


def summary(path: Path, **options) -> dict:
    short = options.pop("short_gap_ns", defaults.SHORT_GAP_NS)
    launch_gap = options.pop("launch_gap_ns", defaults.LAUNCH_GAP_NS)
    with nsysan.open(path) as report:
        parts = gpu_utilization(report, **options)
    out = utilization_summary(parts.with_columns(report=pl.lit("r")), short_gap_ns=short, launch_gap_ns=launch_gap)
    assert out.height == 1, out
    return out.row(0, named=True)


def test_capture_window_by_hand(tmp_path):
    r = summary(pipeline(tmp_path), short_gap_ns=25, launch_gap_ns=100)
    # Capture: first NVTX start 0 to last NVTX end 1000.
    assert (r["window"], r["window_instances"], r["window_ns"]) == ("capture", 1, 1000)
    # Kernel union: [30,40) + [100,300) + [420,430) + [436,440) + [700,705) = 10 + 200 + 10 + 4 + 5 = 229,
    # while the summed durations (nsys's total) are 10 + 100 + 150 + 10 + 4 + 5 = 279.
    assert (r["kernel_busy_ns"], r["kernel_sum_ns"], r["kernels"]) == (229, 279, 6)
    # Copies (memcpy + memset): 150 + 50 = 200; overlap with kernels: [250,300) = 50.
    assert (r["copy_busy_ns"], r["overlap_ns"], r["copies"]) == (200, 50, 2)
    # Busy = 229 + 200 - 50 = 379; idle = 621.
    assert (r["busy_ns"], r["idle_ns"]) == (379, 621)
    assert r["utilization_pct"] == pytest.approx(22.9)
    assert (r["copy_busy_pct"], r["busy_pct"]) == pytest.approx((20.0, 37.9))
    assert r["idle_pct"] == pytest.approx(62.1)
    # Busy intervals [30,40) [100,400) [420,430) [436,440) [600,650) [700,705): gaps 60, 20, 6, 160, 50
    # (idle before 30 and after 705 is not a gap between ops).
    assert r["idle_gaps"] == 5
    assert r["gap_us_p50"] == pytest.approx(0.050)
    assert r["gap_us_p95"] == pytest.approx(0.140)  # 60 + 0.8 * (160 - 60), linear interpolation
    assert r["gap_us_max"] == pytest.approx(0.160)
    assert r["short_gap_idle_pct"] == pytest.approx(100 * (6 + 20) / 621)  # gaps < 25 ns
    assert r["launch_gap_idle_pct"] == pytest.approx(100 * (60 + 20 + 6 + 50) / 621)  # gaps < 100 ns
    # Idle 62 % of the window, but only 21.9 % of it in launch gaps: not launch-bound.
    assert r["launch_bound"] is False
    # gemm ran 100 + 150 = 250 ns of the 229 ns kernel busy time: its share exceeds 100 % because K1 and K2
    # overlap; shares are sums over a union.
    assert r["top_kernel"] == "gemm"
    assert r["top_kernel_pct"] == pytest.approx(100 * 250 / 229)


def test_range_window_from_launch_to_end_of_its_gpu_work(tmp_path):
    r = summary(pipeline(tmp_path), window="forward", short_gap_ns=25, launch_gap_ns=100)
    # forward [60,500): its GPU work ends at 440 < 500, so the window is [60,500) = 440 ns.
    assert (r["window_instances"], r["window_ns"]) == (1, 440)
    # Inside: kernels [100,300) [420,430) [436,440) = 214 (sum 264); copies [250,400) = 150; overlap 50.
    assert (r["kernel_busy_ns"], r["kernel_sum_ns"], r["copy_busy_ns"], r["overlap_ns"]) == (214, 264, 150, 50)
    # Busy 314, idle 126 = 40 before the first op + gaps 20 and 6 + 60 after the last op.
    assert (r["busy_ns"], r["idle_ns"], r["idle_gaps"]) == (314, 126, 2)
    assert r["short_gap_idle_pct"] == pytest.approx(100 * 26 / 126)
    assert r["utilization_pct"] == pytest.approx(100 * 214 / 440)


def test_batches_window_skips_warmup(tmp_path):
    r = summary(pipeline(tmp_path), window="batches")
    # batch_1 [50,1000): kernels 200 + 10 + 4 + 5 = 219 (warm-up kernel W at 30..40 is outside).
    assert (r["window_instances"], r["window_ns"], r["kernel_busy_ns"], r["copy_busy_ns"]) == (1, 950, 219, 200)
    # Without excluding warm-up, warmup_0 does not match batch_* anyway; a glob matching both widens it.
    both = summary(pipeline(tmp_path), window="batches", select=Selection.everything(batches="*_[01]"))
    assert (both["window_instances"], both["window_ns"], both["kernel_busy_ns"]) == (2, 1000, 229)


def test_instances_whose_gpu_work_outlives_the_range(tmp_path):
    b = ExportBuilder()
    b.range("step", 0, 100)
    launch(b, (10, 20), (150, 250))  # runs after the range ended: window extends to 250
    b.range("step", 400, 500)
    launch(b, (410, 420), (430, 440))
    path = b.write(tmp_path / "case.sqlite")
    r = summary(path, window="step")
    # Windows [0,250) and [400,500): 350 ns; kernels 100 + 10.
    assert (r["window_instances"], r["window_ns"], r["kernel_busy_ns"], r["idle_gaps"]) == (2, 350, 110, 0)


def test_per_stream_rows(tmp_path):
    with nsysan.open(pipeline(tmp_path)) as report:
        parts = gpu_utilization(report, by_stream=True)
    out = utilization_summary(parts.with_columns(report=pl.lit("r")))
    got = {r["stream_id"]: (r["kernel_busy_ns"], r["copy_busy_ns"]) for r in out.iter_rows(named=True)}
    # s7: W 10 + K1 100 + K3 10 + K4 4 + K5 5 = 129, memset 50; s8: K2 150; s9: memcpy 150.
    assert got == {7: (129, 50), 8: (150, 0), 9: (0, 150)}


def test_top_kernels(tmp_path):
    with nsysan.open(pipeline(tmp_path)) as report:
        parts = gpu_utilization(report, window="forward")
    top = top_kernels(parts.with_columns(report=pl.lit("r")), top=0)
    # forward: gemm 250 ns (2), relu 14 ns (2); kernel busy 214. Each window lists its kernels most time first.
    assert parts["kernel_times"].to_list() == [[{"name": "gemm", "instances": 2, "time_ns": 250},
                                                 {"name": "relu", "instances": 2, "time_ns": 14}]]
    assert top.select("name", "instances", "time_ns").rows() == [("gemm", 2, 250), ("relu", 2, 14)]
    assert top["busy_share_pct"].to_list() == pytest.approx([100 * 250 / 214, 100 * 14 / 214])


def test_missing_window_is_an_error_naming_the_range(tmp_path):
    path = pipeline(tmp_path)
    with nsysan.open(path) as report, pytest.raises(nsysan.MissingDataError, match="'decode'"):
        gpu_utilization(report, window="decode")


def test_grouping_pools_windows_and_gaps(tmp_path):
    paths = [pipeline(tmp_path, f"pipeline_gpu0_numa{n}_vit1x1x1") for n in (0, 1)]
    pooled = nsysan.utilization(paths, by=["model"], window="forward")
    assert pooled.ok, pooled.failures
    r = pooled.frame.row(0, named=True)
    assert (r["model"], r["window_ns"], r["kernel_busy_ns"], r["idle_gaps"]) == ("vit1x1x1", 880, 428, 4)
    assert r["utilization_pct"] == pytest.approx(100 * 428 / 880)


def test_cli(tmp_path):
    path = pipeline(tmp_path, "pipeline_gpu0_numa0_vit1x1x1")
    runner = CliRunner()
    csv = runner.invoke(app, ["utilization", "--window", "forward", "--format", "csv", str(path)])
    assert csv.exit_code == 0, csv.output
    frame = pl.read_csv(io.StringIO(csv.stdout))
    assert frame.select("window_ns", "kernel_busy_ns").row(0) == (440, 214)
    kernels = runner.invoke(app, ["utilization", "--kernels", "--top", "1", "--format", "json", str(path)])
    assert kernels.exit_code == 0, kernels.output
    assert pl.read_json(io.StringIO(kernels.stdout))["name"].to_list() == ["gemm"]
    out = tmp_path / "u.parquet"
    pq = runner.invoke(app, ["utilization", "--by", "model", "--by-stream", "-o", str(out), str(path)])
    assert pq.exit_code == 0, pq.output
    assert sorted(pl.read_parquet(out)["stream_id"].to_list()) == [7, 8, 9]
    table = runner.invoke(app, ["utilization", "--window", "batches", str(path)])
    assert table.exit_code == 0 and "union" in table.stdout


# -- interval maths against a brute-force count ------------------------------------------------------------------
intervals_st = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), max_size=12).map(
    lambda pairs: (np.array([s for s, _ in pairs], dtype=np.int64),
                   np.array([s + d for s, d in pairs], dtype=np.int64)))


def covered(starts: np.ndarray, ends: np.ndarray) -> set[int]:
    return {t for s, e in zip(starts.tolist(), ends.tolist()) for t in range(s, e)}


@settings(max_examples=60, deadline=None)
@given(intervals_st, intervals_st)
def test_interval_helpers_match_brute_force(ops, window):
    merged = intervals.merge(*ops)
    assert covered(*merged) == covered(*ops)
    assert all(np.diff(merged[0]) > 0) and all(merged[0][1:] > merged[1][:-1])  # sorted, disjoint, not touching
    win = intervals.merge(*window)
    inter = intervals.intersect(merged, win)
    assert covered(*inter) == covered(*ops) & covered(*win)
    clipped = intervals.clipped_lengths(*ops, win)
    assert clipped.tolist() == [len(covered(np.array([s]), np.array([e])) & covered(*win))
                                for s, e in zip(*ops)]


# -- the sample sweep ------------------------------------------------------------------------------------------
def nsys_kernel_total(nsys: str, export: Path, folder: Path) -> int:
    """Sum of "Total Time (ns)" over all kernels in ``nsys stats -r cuda_gpu_kern_sum``."""
    table = nsys_stats(nsys, export, ("cuda_gpu_kern_sum",), folder)["cuda_gpu_kern_sum"]
    return int(table["Total Time (ns)"].sum())


@pytest.fixture(scope="module")
def sweep() -> dict[str, pl.DataFrame]:
    runs = nsysan.collect(list(SAMPLES.values()))
    # The capture is reconciled with nsys stats, which counts every instance; forward is measured batches only.
    out = {"capture": nsysan.utilization(runs, window="capture", select=Selection.everything()),
           "forward": nsysan.utilization(runs, window="forward")}
    for result in out.values():
        assert result.ok, result.failures
    return {window: result.frame for window, result in out.items()}


def by_report(frame: pl.DataFrame) -> dict[str, dict]:
    return {r["report"]: r for r in frame.iter_rows(named=True)}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_kernel_union_is_at_most_nsys_kernel_total(nsys, tmp_path, sweep, name):
    total = nsys_kernel_total(nsys, SAMPLES[name], tmp_path)
    r = by_report(sweep["capture"])[name]
    # Over the whole capture every kernel is inside the window: the summed time equals nsys's total, and the
    # union can only be smaller or equal.
    assert r["kernel_sum_ns"] == total
    assert r["kernel_busy_ns"] <= total
    assert r["busy_ns"] <= r["window_ns"] and r["utilization_pct"] <= 100


SMALL = ["pipeline_gpu0_numa0_vit32x2x128", "pipeline_gpu0_numa0_vit32x6x512",
         "pipeline_gpu0_numa0_vit32x6x512_pageable"]
LARGEST = "pipeline_gpu0_numa0_vit16x12x1024"


def test_small_vits_are_launch_bound_and_the_largest_is_busier(sweep):
    forward = by_report(sweep["forward"])
    for name in SMALL:
        r = forward[name]
        assert r["window_instances"] == 30  # measured batches only
        assert r["launch_bound"], r
        # The largest model keeps the GPU markedly busier in its forward pass.
        assert forward[LARGEST]["utilization_pct"] > 1.5 * r["utilization_pct"], (name, r["utilization_pct"])


def _parts(rows: list[tuple]) -> pl.DataFrame:
    """Per-window rows of gpu_utilization, as the pooling functions read them: (model, kernel_busy_ns,
    [(name, instances, time_ns), ...])."""
    kernel = pl.Struct({"name": pl.String, "instances": pl.Int64, "time_ns": pl.Int64})
    return pl.DataFrame({
        "model": [r[0] for r in rows], "device_id": [0] * len(rows), "kernel_busy_ns": [r[1] for r in rows],
        "kernel_times": [[dict(zip(("name", "instances", "time_ns"), k)) for k in r[2]] for r in rows],
    }, schema_overrides={"kernel_times": pl.List(kernel)})


def test_top_kernels_pools_windows_orders_ties_by_name_and_keeps_null_groups_last():
    parts = _parts([("b", 0, [("zero", 1, 0)]),
                    (None, 5, [("n", 1, 5)]),
                    ("a", 1, [("k", 1, 1)]),
                    ("a", 3, [("k", 1, 1), ("j", 2, 2)])])
    top = top_kernels(parts, by=["model"])
    # a: k 2 ns (2 launches), j 2 ns: a tie, by name; kernel busy 1 + 3 = 4 ns. b: busy 0, no share. null: 5 of 5.
    assert top.rows() == [("a", 0, "j", 2, 2, 50.0), ("a", 0, "k", 2, 2, 50.0), ("b", 0, "zero", 1, 0, None),
                          (None, 0, "n", 1, 5, 100.0)]
    one = top_kernels(_parts([("a", 1, [("k", 1, 1)])]), by=["model"])
    assert one["busy_share_pct"].to_list() == [100.0]  # a busy time of exactly 1 ns has a share


def test_top_kernels_keeps_ten_by_default_and_cuts_ties_by_name():
    times = [100 - i for i in range(9)] + [50, 50, 10]  # x09 and x10 tie for the tenth place
    parts = _parts([("a", 1000, [(f"x{i:02d}", 1, t) for i, t in enumerate(times)])])
    top = top_kernels(parts, by=["model"])
    assert top["name"].to_list() == [f"x{i:02d}" for i in range(10)]
    assert top_kernels(parts, by=["model"], top=3)["name"].to_list() == ["x00", "x01", "x02"]
    assert top_kernels(parts, by=["model"], top=0).height == 12


def test_top_kernels_counts_the_top_within_each_group():
    parts = _parts([("a", 100, [("a1", 1, 90), ("a2", 1, 80)]), ("b", 100, [("b1", 1, 70), ("b2", 1, 60)])])
    assert top_kernels(parts, by=["model"], top=1).select("model", "name").rows() == [("a", "a1"), ("b", "b1")]


def test_a_windows_kernels_of_equal_time_are_listed_by_name(tmp_path):
    b = ExportBuilder()
    b.range("forward", 0, 1000)
    for i, name in enumerate(("zeta", "alpha", "mid")):
        b.launch(MAIN_TID, 10 + 10 * i, 15 + 10 * i, 100 + 200 * i, 150 + 200 * i, name=name)
    with nsysan.open(b.write(tmp_path / "ties.sqlite")) as report:
        parts = gpu_utilization(report, window="forward")
    assert [k["name"] for k in parts["kernel_times"].item()] == ["alpha", "mid", "zeta"]


def test_a_range_window_of_an_export_without_nvtx_names_the_window(tmp_path):
    b = ExportBuilder()
    b.launch(MAIN_TID, 10, 20, 30, 40)
    path = b.write(tmp_path / "no_nvtx.sqlite")
    (failure,) = nsysan.utilization(path, window="forward").failures
    assert failure.reason.endswith("(needed for the 'forward' window)"), failure.reason
    assert nsysan.utilization(path).ok  # the capture window needs no ranges


def test_top_kernels_of_a_window_without_kernels_is_an_empty_frame_with_its_columns():
    top = top_kernels(_parts([("a", 0, [])]), by=["model"])
    assert top.is_empty()
    assert top.schema == pl.Schema({"model": pl.String, "device_id": pl.Int64, "name": pl.String,
                                    "instances": pl.Int64, "time_ns": pl.Int64, "busy_share_pct": pl.Float64})


def test_a_capture_without_gpu_ops_says_what_to_capture(tmp_path):
    b = ExportBuilder()
    b.range("batch_0", 0, 100)
    result = nsysan.utilization(b.write(tmp_path / "nvtx_only.sqlite"))
    assert not result.ok and result.frame.is_empty()
    assert result.failures[0].reason.endswith("no CUDA kernels: profile with -t cuda (and check the program "
                                              "launched kernels) (needed for GPU utilization)")


def test_shares_of_a_one_nanosecond_window_and_of_an_empty_one(tmp_path):
    b = ExportBuilder()
    b.range("step", 0, 1)
    b.launch(MAIN_TID, 0, 1, 0, 1)  # everything in [0, 1): a window of exactly 1 ns, busy all of it
    r = summary(b.write(tmp_path / "one_ns.sqlite"))
    assert (r["window_ns"], r["utilization_pct"], r["busy_pct"], r["top_kernel_pct"]) == (1, 100.0, 100.0, 100.0)
    assert r["copy_busy_pct"] == 0.0  # no copies: 0 %, not n/a
    b = ExportBuilder()
    b.range("step", 5, 5)
    b.launch(MAIN_TID, 5, 5, 5, 5)  # a capture of one instant: no time to share
    r = summary(b.write(tmp_path / "instant.sqlite"))
    assert (r["window_ns"], r["utilization_pct"], r["idle_pct"], r["top_kernel_pct"]) == (0, None, None, None)
