"""The GPU timeline on a sample report: the window's frame against the report's own tables and the
throughput analysis's batches, every op and range drawn where the frame says, and the binned path for
lanes with more items than pixels."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_plots import assert_axes_labelled, save, title

import nsysan
from nsysan import plots
from nsysan.analyses.throughput import batch_trace
from nsysan.analyses.timeline import timeline_frame
from nsysan.attribution import launches
from nsysan.errors import MissingDataError
from nsysan.plots.style import OP_COLORS
from nsysan.plots.timeline import time_unit

GPU_LANE = "GPU 0 · stream 7"


@pytest.fixture(scope="module")
def report():
    path = next(p for p in nsysan.sample_paths() if p.name == "pipeline_gpu0_numa0_vit32x6x512.sqlite")
    with nsysan.open(path) as r:
        yield r


@pytest.fixture(scope="module")
def frame(report) -> pl.DataFrame:
    return timeline_frame(report, window=("batch_*", 3))


def _collections(fig, prefix: str) -> dict[str, object]:
    return {c.get_gid(): c for ax in fig.axes for c in ax.collections if (c.get_gid() or "").startswith(prefix)}


def test_frame_is_three_measured_batches_with_their_ops_and_ranges(report, frame):
    batches = batch_trace(report).head(3)  # measured batches: warm-up excluded
    start = batches["start_ns"][0]
    end = max(batches["end_ns"].max(), batches["gpu_end_ns"].max())
    assert (frame["window_start_ns"][0], frame["window_end_ns"][0]) == (start, end)
    assert frame["window"][0] == f"{batches['range'][0]} … {batches['range'][2]} (3 of 30 measured batch_*)"
    ops = report.table("gpu_ops").filter(pl.col("end_ns") >= start, pl.col("start_ns") <= end)
    drawn = frame.filter(pl.col("lane") == "gpu")
    assert drawn.height == ops.height == 225
    assert sorted(drawn.select("start_ns", "end_ns", "device_id", "stream_id").rows()) == sorted(
        ops.select("start_ns", "end_ns", "device_id", "stream_id").rows())
    # every op carries the thread whose CUDA call launched it
    launched = launches(report).select("op_start", "op_end", tid=pl.col("global_tid") % (1 << 24)).unique()
    joined = drawn.join(launched, left_on=["start_ns", "end_ns"], right_on=["op_start", "op_end"], how="left")
    assert joined["tid"].to_list() == joined["tid_right"].to_list()
    assert set(drawn["thread"].cast(pl.String)) == {"python3"}
    kernels = report.table("kernels").filter(pl.col("end_ns") >= start, pl.col("start_ns") <= end)
    assert sorted(drawn.filter(kind="kernel")["name"].cast(pl.String)) == sorted(kernels["short_name"])
    copies = drawn.filter(kind="memcpy")
    assert set(copies["name"].cast(pl.String)) == {"Host-to-Device", "Device-to-Host"}
    assert copies["bytes"].is_not_null().all()
    ranges = frame.filter(pl.col("lane") == "thread")
    assert ranges.height == 15  # 3 batches x (batch + preprocess, h2d, forward, d2h)
    assert ranges.filter(level=0)["name"].cast(pl.String).to_list() == batches["range"].to_list()
    assert set(ranges.filter(level=1)["name"].cast(pl.String)) == {"preprocess", "h2d", "forward", "d2h"}
    assert set(frame["report"].cast(pl.String)) == {"pipeline_gpu0_numa0_vit32x6x512"}


def test_timeline_draws_every_item_where_the_frame_says(frame):
    fig = plots.gpu_timeline(frame)
    save(fig, "timeline_3_batches")
    ax = fig.axes[0]
    lanes = [t.get_text() for t in ax.get_yticklabels()]
    assert lanes == ["python3 755 · NVTX L0", "python3 755 · NVTX L1", GPU_LANE]
    start = frame["window_start_ns"][0]
    drawn = _collections(fig, "bars|")
    assert set(drawn) == {f"bars|{lane}" for lane in lanes}
    for lane, rows in (("python3 755 · NVTX L0", frame.filter(lane="thread", level=0)),
                       ("python3 755 · NVTX L1", frame.filter(lane="thread", level=1)),
                       (GPU_LANE, frame.filter(lane="gpu"))):
        paths = drawn[f"bars|{lane}"].get_paths()
        assert len(paths) == rows.height
        xs = np.array([[p.vertices[:, 0].min(), p.vertices[:, 0].max()] for p in paths])
        np.testing.assert_allclose(xs, np.stack([(rows["start_ns"] - start) / 1e6, (rows["end_ns"] - start) / 1e6], 1))
    colors = drawn[f"bars|{GPU_LANE}"].get_facecolors()
    kinds = frame.filter(lane="gpu").select(pl.when(pl.col("kind") == "memcpy").then(pl.col("name").cast(pl.String))
                                            .otherwise(pl.col("kind").cast(pl.String))).to_series().to_list()
    from matplotlib.colors import to_rgba
    assert [tuple(c) for c in colors] == [to_rgba(OP_COLORS[k]) for k in kinds]
    texts = {t.get_text() for t in ax.texts}
    assert {"batch_5", "batch_6", "batch_7", "preprocess", "forward"} <= texts  # wide items carry their names
    assert ax.get_xlim() == pytest.approx((0, (frame["window_end_ns"][0] - start) / 1e6))
    assert "Every item drawn as its own bar" in plots.notes(fig)[0]
    assert "pipeline_gpu0_numa0_vit32x6x512" in title(fig) and "batch_5 … batch_7" in title(fig)
    assert ax.get_xlabel() == "Time since window start (ms)"
    assert_axes_labelled(fig)


def test_busy_lane_is_binned_into_busy_fractions(frame):
    bins = 100
    fig = plots.gpu_timeline(frame, bins=bins, max_bars=50)
    save(fig, "timeline_3_batches_binned")
    start, end = frame["window_start_ns"][0], frame["window_end_ns"][0]
    width_ms = (end - start) / bins / 1e6
    binned = _collections(fig, f"bins|{GPU_LANE}|")
    assert set(binned) == {f"bins|{GPU_LANE}|{k}" for k in ("kernel", "memset", "Host-to-Device", "Device-to-Host")}
    ops = frame.filter(lane="gpu")
    for gid, collection in binned.items():
        key = gid.rsplit("|", 1)[1]
        rows = ops.filter(pl.col("kind") == key) if key in ("kernel", "memset") else ops.filter(
            pl.col("name").cast(pl.String) == key)
        shares = [(p.vertices[:, 1].max() - p.vertices[:, 1].min()) / 0.8 for p in collection.get_paths()]
        inside = (rows["end_ns"].clip(upper_bound=end) - rows["start_ns"].clip(lower_bound=start)).sum() / 1e6
        assert sum(shares) * width_ms == pytest.approx(inside, rel=1e-6)  # every op's time lands in some bin
        assert max(shares) <= 1 + 1e-9
    assert len(_collections(fig, "bars|")) == 2  # the NVTX lanes hold fewer items than max_bars
    note = plots.notes(fig)[0]
    assert f"{ops.height} items of 1 busy lane(s) drawn as {bins} bins" in note
    assert_axes_labelled(fig)


def test_capture_and_explicit_windows(report):
    capture = timeline_frame(report, window="capture")
    ops = report.table("gpu_ops")
    ranges = report.table("nvtx_ranges")
    assert capture.filter(lane="gpu").height == ops.height == 2779
    assert capture["window_start_ns"][0] == min(ops["start_ns"].min(), ranges["start_ns"].min())
    assert capture["window_end_ns"][0] == max(ops["end_ns"].max(), ranges["end_ns"].max())
    fig = plots.gpu_timeline(capture)
    save(fig, "timeline_capture")
    lanes = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert lanes[-2:] == [GPU_LANE, "GPU 0 · stream 13"]
    assert f"bins|{GPU_LANE}|kernel" in _collections(fig, "bins|")  # 2,777 ops > 1,500 bins
    assert "bars|GPU 0 · stream 13" in _collections(fig, "bars|")  # 2 memsets: bars
    assert "drawn as 1,500 bins" in plots.notes(fig)[0]
    start = capture["window_start_ns"][0]
    window = timeline_frame(report, window=(start, start + 200_000_000))
    assert window["window"][0] == f"{start:,} – {start + 200_000_000:,} ns"
    inside = ops.filter(pl.col("end_ns") >= start, pl.col("start_ns") <= start + 200_000_000)
    assert window.filter(lane="gpu").height == inside.height
    one = timeline_frame(report, window=("batch_*", 1, 29))
    assert one["window"][0].endswith("(1 of 30 measured batch_*)")
    assert one.filter(lane="thread", level=0)["name"].cast(pl.String).to_list() == [batch_trace(report)["range"][29]]


def test_window_errors_and_time_unit(report):
    with pytest.raises(MissingDataError, match="no measured instance"):
        timeline_frame(report, window=("nope_*", 3))
    with pytest.raises(ValueError, match="window must be"):
        timeline_frame(report, window=(1.5, 2.5))
    with pytest.raises(ValueError, match="must come after"):
        timeline_frame(report, window=(10, 5))
    assert time_unit(int(9e9)) == (1e6, "ms") and time_unit(int(20e9)) == (1e9, "s")


def _cuda_only_export(path):
    """Two kernels and a copy launched from one thread, no NVTX range: nsys then writes no NVTX_EVENTS table."""
    from builders import MAIN_TID, ExportBuilder

    b = ExportBuilder()
    b.launch(MAIN_TID, 10, 20, 30, 50, name="gemm")
    b.launch(MAIN_TID, 25, 28, 55, 90, kind="memcpy")
    b.launch(MAIN_TID, 60, 70, 100, 140, name="relu")
    return b.write(path)


def test_export_without_nvtx_draws_its_gpu_rows(tmp_path):
    path = _cuda_only_export(tmp_path / "cuda_only.sqlite")
    with nsysan.open(path) as r:
        assert not r.has("NVTX_EVENTS")
        capture = timeline_frame(r, window="capture")
        ns = timeline_frame(r, window=(0, 60))
        with pytest.raises(MissingDataError, match="NVTX"):
            timeline_frame(r, window=("batch_*", 3))
    assert capture.filter(lane="thread").is_empty()
    assert capture.select("kind", "name", "start_ns", "end_ns").with_columns(
        pl.col("kind", "name").cast(pl.String)).rows() == [
        ("kernel", "gemm", 30, 50), ("memcpy", "Host-to-Device", 55, 90), ("kernel", "relu", 100, 140)]
    assert capture["tid"].to_list() == [101] * 3 and capture["pid"].to_list() == [100] * 3
    assert (capture["window_start_ns"][0], capture["window_end_ns"][0]) == (30, 140)
    assert ns.select("start_ns", "end_ns").rows() == [(30, 50), (55, 90)]  # ops running in [0, 60]
    fig = plots.gpu_timeline(capture)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["GPU 0 · stream 7"]
    assert len(_collections(fig, "bars|")["bars|GPU 0 · stream 7"].get_paths()) == 3


def test_rows_are_ordered_by_lane_and_time_and_ties_by_name():
    """The order does not depend on the order DuckDB returned the rows in; names only break exact ties."""
    from nsysan.analyses.timeline import _in_fixed_order

    rows = {"lane": ["thread", "gpu", "gpu", "gpu"], "name": ["r", "z", "b", "a"], "start_ns": [0, 5, 1, 1],
            "end_ns": [9, 6, 2, 2], "device_id": [None, 0, 0, 0], "stream_id": [None, 7, 7, 7],
            "tid": [1, 1, 1, 1], "level": [0, None, None, None]}
    frame = pl.DataFrame(rows).with_columns(pl.col("lane", "name").cast(pl.Categorical))
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        ordered = _in_fixed_order(frame[order])
        assert ordered["name"].cast(pl.String).to_list() == ["a", "b", "z", "r"]
