"""Distributed runs: how the ranks arrive at each NCCL collective (skew), and how much of each rank's
communication compute hides.

Inputs: :func:`nsysan.collective_calls` (one row per call and rank: ``late_ns``, ``wait_ns``, ``last``,
``step``) for :func:`skew_chart`, and :func:`nsysan.comm` (per rank and collective: ``comm_ms``,
``compute_ms``, ``overlap_ms``, ``exposed_comm_ms``) for :func:`comm_overlap_chart`. Nothing is computed but
unit changes (ns to ms): points and bars are the frames' cells.
"""
from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from nsysan.plots.frames import key_columns, require_columns
from nsysan.plots.style import (
    add_note,
    group_label,
    new_figure,
    palette,
    set_title,
    styled,
    unit_label,
)

#: Segments of a rank's GPU time in :func:`comm_overlap_chart`: (label, colour).
OVERLAP_SEGMENTS = {"compute_only_ms": ("compute only", "#4c72b0"),
                    "overlap_ms": ("communication hidden by compute", "#55a868"),
                    "exposed_comm_ms": ("exposed communication", "#c44e52")}


@styled
def skew_chart(calls: pl.DataFrame, *, collectives: list[str] | None = None) -> Figure:
    """Two panels over the NCCL calls of one report, one series per rank, x = the call's number (its order on
    the NCCL stream): how late the rank arrived at the call (``late_ns`` in ms: its kernel start − the first
    rank's), and how long it waited inside the kernel for the last rank (``wait_ns`` in ms). Calls the rank
    arrived last at (``last``) are drawn as filled markers; measured steps (``step``) are shaded in turn.
    ``collectives``: only these (default all)."""
    require_columns(calls.columns, ["report", "call", "collective", "rank", "late_ns", "wait_ns", "last"],
                    "skew_chart")
    if calls["report"].n_unique() > 1:
        raise ValueError("skew_chart draws one report; filter the frame: calls.filter(pl.col('report') == ...)")
    frame = calls if collectives is None else calls.filter(pl.col("collective").is_in(collectives))
    if frame.is_empty():
        raise ValueError("skew_chart: no NCCL calls to draw")
    frame = frame.sort("call", "rank")
    ranks = frame["rank"].unique().sort().to_list()
    fig, axes = new_figure(2, 1, figsize=(12, 6.2), sharex=True)
    ax_late, ax_wait = axes[0][0], axes[1][0]
    _shade_steps(frame, (ax_late, ax_wait))
    for color, rank in zip(palette(len(ranks)), ranks):
        rows = frame.filter(pl.col("rank") == rank)
        x = rows["call"].to_numpy()
        late = rows["late_ns"].cast(pl.Float64).to_numpy() / 1e6
        wait = rows["wait_ns"].cast(pl.Float64).to_numpy() / 1e6
        last = rows["last"].fill_null(False).to_numpy()
        n_last = int(last.sum())
        ax_late.plot(x, late, color=color, linewidth=0.9, alpha=0.7, label=f"rank {rank} (last at {n_last:,} of "
                     f"{rows.height:,} calls)", gid=f"late|{rank}")
        ax_late.plot(x[last], late[last], linestyle="none", marker="o", markersize=3.5, color=color,
                     label=f"_last:{rank}")
        ax_wait.plot(x, wait, color=color, linewidth=0.9, alpha=0.8, label=f"rank {rank}", gid=f"wait|{rank}")
    ax_late.set_ylabel(unit_label("Arrival after the first rank", "ms"))
    ax_wait.set_ylabel(unit_label("Waiting inside the kernel", "ms"))
    ax_wait.set_xlabel(unit_label("NCCL call, in stream order", "count"))
    for ax in (ax_late, ax_wait):
        ax.set_ylim(bottom=0)
        ax.set_xlim(frame["call"].min() - 0.5, frame["call"].max() + 0.5)
        ax.grid(axis="x", visible=False)
    ax_late.legend(loc="upper left", fontsize=8.5)
    which = ", ".join(f"{c} ×{n:,}" for c, n in frame.group_by("collective", maintain_order=True).agg(
        (pl.col("call").n_unique()))[["collective", "call"]].iter_rows())
    set_title(fig, f"Arrival skew per NCCL call — {frame['report'][0]}: {which}")
    add_note(fig, "Late = the rank's kernel start − the earliest start of the same call on any rank; waiting = the "
                  "time the rank's kernel ran before the last rank's started. Filled markers: the rank arrived "
                  "last (the straggler of that call). Shaded bands: measured steps, in turn.")
    return fig


def _shade_steps(frame: pl.DataFrame, axes: tuple) -> None:
    if "step" not in frame.columns or frame["step"].is_null().all():
        return
    spans = (frame.filter(pl.col("step").is_not_null()).group_by("step", maintain_order=True)
             .agg(lo=pl.col("call").min(), hi=pl.col("call").max()).sort("lo"))
    for i, (lo, hi) in enumerate(spans.select("lo", "hi").iter_rows()):
        if i % 2 == 0:
            for ax in axes:
                ax.axvspan(lo - 0.5, hi + 0.5, color="0.93", zorder=0, linewidth=0)


@styled
def comm_overlap_chart(comm: pl.DataFrame) -> Figure:
    """Per group and rank (``collective == "all"`` rows of :func:`nsysan.comm`): one stacked bar of the
    rank's GPU time = compute only (``compute_ms − overlap_ms``), communication hidden by compute
    (``overlap_ms``) and exposed communication (``exposed_comm_ms``) — together the union of the two, in ms.
    A second panel splits each rank's NCCL time by collective (``overlap_ms`` and ``exposed_comm_ms``)."""
    keys = [k for k in key_columns(comm.columns, "rank")]
    require_columns(comm.columns, ["rank", "collective", "comm_ms", "compute_ms", "overlap_ms", "exposed_comm_ms",
                                   "exposed_pct"], "comm_overlap_chart")
    total = comm.filter(pl.col("collective") == "all")
    if total.is_empty():
        raise ValueError("comm_overlap_chart: no 'all' rows (nsysan.comm's per-rank totals)")
    total = total.with_columns(compute_only_ms=pl.col("compute_ms") - pl.col("overlap_ms"))
    each = comm.filter(pl.col("collective") != "all")
    keys = [k for k in keys if total[k].n_unique() > 1]
    fig, axes = new_figure(1, 2, figsize=(12.5, 1.9 + 0.5 * max(total.height, each.height * 0.55)),
                           width_ratios=[1.25, 1])
    ax, ax_each = axes[0]
    labels = [(group_label(r, keys) + " · " if keys else "") + f"rank {r['rank']}" for r in total.iter_rows(named=True)]
    y = np.arange(total.height)
    left = np.zeros(total.height)
    for column, (label, color) in OVERLAP_SEGMENTS.items():
        values = total[column].cast(pl.Float64).fill_null(0.0).to_numpy()
        ax.barh(y, values, left=left, height=0.62, color=color, label=label, edgecolor="white", linewidth=0.6)
        left += values
    for i, row in enumerate(total.iter_rows(named=True)):
        ax.annotate(f"{row['exposed_pct']:.0f} % of {row['comm_ms']:,.1f} ms NCCL exposed", (left[i], i),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8, color="0.25")
    ax.set_yticks(y, labels)
    ax.set_ylim(total.height - 0.5, -0.5)
    ax.set_xlabel(unit_label("GPU time (union of kernel intervals)", "ms"))
    ax.set_ylabel("Rank")
    ax.margins(x=0.3)
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=3, fontsize=8.5, borderaxespad=0)
    if each.is_empty():
        ax_each.set_axis_off()
    else:
        each = each.sort(*keys, "rank", "comm_ms", descending=[*([False] * len(keys)), False, True])
        ey = np.arange(each.height)
        elabels = [(group_label(r, keys) + " · " if keys else "") + f"rank {r['rank']} · {r['collective']} "
                   f"({r['calls']:,})" for r in each.iter_rows(named=True)]
        base = np.zeros(each.height)
        for column in ("overlap_ms", "exposed_comm_ms"):
            label, color = OVERLAP_SEGMENTS[column]
            values = each[column].cast(pl.Float64).fill_null(0.0).to_numpy()
            ax_each.barh(ey, values, left=base, height=0.62, color=color, label=label, edgecolor="white",
                         linewidth=0.6)
            base += values
        ax_each.set_yticks(ey, elabels, fontsize=8)
        ax_each.set_ylim(each.height - 0.5, -0.5)
        ax_each.set_xlabel(unit_label("NCCL time per collective", "ms"))
        ax_each.set_ylabel("Rank · collective (calls)")
        ax_each.grid(axis="y", visible=False)
    reports = ", ".join(comm["report"].unique(maintain_order=True).cast(pl.String).to_list()) \
        if "report" in comm.columns else ""
    set_title(fig, "Communication and compute per rank" + (f" — {reports}" if reports else ""))
    add_note(fig, "Per rank, on its GPU: compute = union of the non-NCCL kernels, NCCL = union of the NCCL kernels; "
                  "hidden = their intersection; exposed = NCCL time no compute kernel overlaps. NCCL time includes "
                  "waiting inside the kernel for the other ranks.")
    return fig
