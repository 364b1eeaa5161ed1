"""The distributed-run figures on the real 2-GPU DDP capture: skew_chart draws each rank's lateness and waiting
per NCCL call exactly as nsysan.collective_calls gives them, comm_overlap_chart each rank's compute,
overlapped and exposed communication as nsysan.comm gives them; series counted, axes labelled with units."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_plots import assert_axes_labelled, bars, save, title

import nsysan
from nsysan import plots
from nsysan.plots.distributed import OVERLAP_SEGMENTS

DDP = Path(__file__).parent / "fixtures" / "h200x2" / "ddp_resnet18_2gpu.sqlite"


@pytest.fixture(scope="module")
def calls() -> pl.DataFrame:
    return nsysan.collective_calls(DDP).frame


@pytest.fixture(scope="module")
def comm() -> pl.DataFrame:
    return nsysan.comm(DDP).frame


def _line(ax, gid):
    found = [ln for ln in ax.get_lines() if ln.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def test_skew_chart_draws_each_ranks_lateness_and_wait(calls):
    fig = plots.skew_chart(calls)
    save(fig, "skew_chart")
    late_ax, wait_ax = fig.axes[:2]
    assert {ln.get_gid() for ln in late_ax.get_lines() if ln.get_gid()} == {"late|0", "late|1"}
    for rank in (0, 1):
        rows = calls.filter(pl.col("rank") == rank).sort("call")
        late, wait = _line(late_ax, f"late|{rank}"), _line(wait_ax, f"wait|{rank}")
        assert np.array_equal(late.get_xdata(), rows["call"].to_numpy())
        assert np.allclose(late.get_ydata(), rows["late_ns"].to_numpy() / 1e6)
        assert np.allclose(wait.get_ydata(), rows["wait_ns"].to_numpy() / 1e6)
        # filled markers: the calls this rank arrived last at
        marks = next(ln for ln in late_ax.get_lines() if ln.get_label() == f"_last:{rank}")
        assert np.array_equal(marks.get_xdata(), rows.filter(pl.col("last"))["call"].to_numpy())
    legend = [t.get_text() for t in late_ax.get_legend().get_texts()]
    assert legend == ["rank 0 (last at 11 of 104 calls)", "rank 1 (last at 93 of 104 calls)"]
    assert "AllReduce ×60" in title(fig) and "ddp_resnet18_2gpu" in title(fig)
    assert_axes_labelled(fig)
    only = plots.skew_chart(calls, collectives=["AllReduce"])
    assert len(_line(only.axes[0], "late|1").get_xdata()) == 60


def test_skew_chart_refuses_several_reports(calls):
    with pytest.raises(ValueError, match="one report"):
        plots.skew_chart(pl.concat([calls, calls.with_columns(report=pl.lit("other"))]))


def test_comm_overlap_chart_stacks_compute_overlap_and_exposed(comm):
    fig = plots.comm_overlap_chart(comm)
    save(fig, "comm_overlap_chart")
    ax, ax_each = fig.axes[:2]
    total = comm.filter(pl.col("collective") == "all").sort("rank")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 0", "rank 1"]
    compute_only = bars(ax, OVERLAP_SEGMENTS["compute_only_ms"][0])
    overlap = bars(ax, OVERLAP_SEGMENTS["overlap_ms"][0])
    exposed = bars(ax, OVERLAP_SEGMENTS["exposed_comm_ms"][0])
    assert np.allclose([b.get_width() for b in compute_only], total["compute_ms"] - total["overlap_ms"])
    assert np.allclose([b.get_width() for b in overlap], total["overlap_ms"])
    assert np.allclose([b.get_width() for b in exposed], total["exposed_comm_ms"])
    # the stack ends at compute ∪ communication = compute + exposed communication
    ends = [b.get_x() + b.get_width() for b in exposed]
    assert np.allclose(ends, total["compute_ms"] + total["exposed_comm_ms"])
    each = comm.filter(pl.col("collective") != "all")
    assert len(ax_each.get_yticklabels()) == each.height == 6
    assert sum(b.get_width() for b in bars(ax_each, OVERLAP_SEGMENTS["exposed_comm_ms"][0])) == pytest.approx(
        each["exposed_comm_ms"].sum())
    assert_axes_labelled(fig)


def test_comm_overlap_chart_needs_the_per_rank_totals(comm):
    with pytest.raises(ValueError, match="'all' rows"):
        plots.comm_overlap_chart(comm.filter(pl.col("collective") != "all"))


def test_timeline_of_two_ranks_names_each_ranks_lanes():
    frame = nsysan.timeline(DDP, window=("step_*", 4)).frame
    fig = plots.gpu_timeline(frame)
    save(fig, "timeline_ddp")
    lanes = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    threads = [lane for lane in lanes if "NVTX" in lane]
    assert {lane.split(" · ")[0] for lane in threads} == {"rank 0", "rank 1"}
    assert {lane for lane in lanes if lane.startswith("GPU")} == {"GPU 0 · stream 7", "GPU 0 · stream 17",
                                                                    "GPU 1 · stream 7", "GPU 1 · stream 17"}


def _steps_per_process() -> dict[int, list[tuple[str, int, int]]]:
    """The step_* ranges of each process straight from NVTX_EVENTS, in time order: {pid: [(name, start, end)]}."""
    import sqlite3

    with sqlite3.connect(DDP) as con:
        rows = con.execute(
            "SELECT coalesce(e.text, s.value), e.start, e.\"end\", e.globalTid FROM NVTX_EVENTS AS e "
            "LEFT JOIN StringIds AS s ON s.id = e.textId WHERE e.eventType IN (59, 60) ORDER BY e.start").fetchall()
    steps: dict[int, list[tuple[str, int, int]]] = {}
    for name, start, end, tid in rows:
        if name.startswith("step_"):
            steps.setdefault((tid >> 24) & 0xFFFFFF, []).append((name, start, end))
    return steps


@pytest.mark.parametrize(("count", "skip"), [(3, 0), (2, 18)])
def test_timeline_count_is_per_rank(count, skip):
    """step_*:COUNT takes COUNT steps of each rank, the k-th of each; the window spans all of them."""
    import sqlite3

    steps = _steps_per_process()
    assert {pid: len(s) for pid, s in steps.items()} == {648: 20, 649: 20}
    chosen = {pid: s[skip:skip + count] for pid, s in steps.items()}
    start = min(r[1] for s in chosen.values() for r in s)
    cpu_end = max(r[2] for s in chosen.values() for r in s)
    # the GPU work launched inside the chosen steps, matched by correlationId within the process
    inside = " OR ".join(f"(r.globalTid >> 24 & 16777215 = {pid} AND r.start >= {a} AND r.\"end\" <= {b})"
                         for pid, s in chosen.items() for _, a, b in s)
    with sqlite3.connect(DDP) as con:
        gpu_end = max(con.execute(
            f"SELECT max(o.\"end\") FROM CUPTI_ACTIVITY_KIND_RUNTIME AS r JOIN {table} AS o "
            f"ON o.correlationId = r.correlationId AND o.globalPid >> 24 = r.globalTid >> 24 WHERE {inside}"
        ).fetchone()[0] or 0 for table in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
                                           "CUPTI_ACTIVITY_KIND_MEMSET"))
    frame = nsysan.timeline(DDP, window=("step_*", count, skip)).frame
    names = chosen[648]
    assert [s[0] for s in chosen[649]] == [s[0] for s in names]  # the k-th step of each rank is the same step
    assert frame["window"][0] == f"{names[0][0]} … {names[-1][0]} ({count} of 20 measured step_* per rank)"
    assert (frame["window_start_ns"][0], frame["window_end_ns"][0]) == (start, max(cpu_end, gpu_end))
    drawn = frame.filter(lane="thread", level=0)
    for pid, s in chosen.items():
        ranks = drawn.filter(pid=pid).select(pl.col("name").cast(pl.String), "start_ns", "end_ns").rows()
        assert set(s) <= set(ranks)
