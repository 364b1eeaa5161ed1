"""Stage breakdown: per group of runs, the CPU time and GPU-projected time of each pipeline stage, stacked.

Input: a :func:`nsysan.latency_summary` frame (one row per group and NVTX range name). Nothing is
computed: bar lengths are the frame's ``{time}_{statistic}`` cells (default ``range_ms_p50`` and
``gpu_proj_ms_p50``), whiskers reach its ``{time}_{whisker}`` cells (``_p95``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from nsysan.plots.frames import key_columns, require_columns
from nsysan.plots.style import (
    PIPELINE_STAGES,
    add_note,
    axes_for,
    group_label,
    legend_outside,
    set_title,
    stage_color,
    styled,
    unit_label,
)

#: What each time prefix of the latency summary measures (docs/metrics.md).
TIME_LABELS = {"range_ms": "CPU time (NVTX range)", "gpu_proj_ms": "GPU projected time",
               "gpu_busy_ms": "GPU busy time"}
WHISKER_LABEL = "_whisker:"


def default_stages(latency: pl.DataFrame) -> list[str]:
    """The pipeline stages (preprocess, h2d, forward, d2h) the frame holds, in pipeline order; without any,
    every range name in the frame's order."""
    present = latency["range"].unique(maintain_order=True).to_list()
    chosen = [s for s in PIPELINE_STAGES if s in present]
    return chosen or present


@styled
def stage_breakdown(latency: pl.DataFrame, *, by: Sequence[str] | None = None, stages: Sequence[str] | None = None,
                    times: Sequence[str] = ("range_ms", "gpu_proj_ms"), statistic: str = "p50",
                    whisker: str | None = "p95", total: str | None = "batch_*",
                    ax: Axes | Sequence[Axes] | None = None) -> Figure:
    """Stacked horizontal bars, one per group of ``by`` (default: the frame's grouping keys, the columns
    before ``range``), one panel per time in ``times`` (``range_ms``: CPU time; ``gpu_proj_ms``: GPU
    projected time; ``gpu_busy_ms``: GPU busy time).

    Reads ``range`` and, per time prefix, ``{prefix}_{statistic}`` (segment lengths) and
    ``{prefix}_{whisker}`` (whisker ends). Segments follow ``stages`` (default :func:`default_stages`);
    a cell that is null (a stage without GPU work) draws nothing. ``total`` names an enclosing range
    (``batch_*``) whose ``{prefix}_{statistic}`` is marked with a diamond: the whole batch, for comparison
    with the stack. ``ax``: one Axes per panel to draw into instead of a new figure."""
    keys = list(by) if by is not None else key_columns(latency.columns, "range")
    if not keys:
        latency, keys = latency.with_columns(_all=pl.lit("all runs")), ["_all"]
    stages = list(stages) if stages is not None else default_stages(latency)
    columns = [f"{t}_{statistic}" for t in times] + ([f"{t}_{whisker}" for t in times] if whisker else [])
    require_columns(latency.columns, [*keys, "range", *columns], "stage_breakdown")
    if not stages:
        raise ValueError("stage_breakdown: no stages to draw")
    groups = latency.select(keys).unique(maintain_order=True)
    labels = [group_label(row, keys) for row in groups.iter_rows(named=True)]
    fig, axes = axes_for(ax, len(times), figsize=(11, 1.9 + 0.42 * len(labels)), sharey=True)
    for axis, prefix in zip(axes, times):
        _panel(axis, latency, keys, groups, stages, prefix, statistic, whisker, total)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].set_ylim(len(labels) - 0.4, -0.6)
    axes[0].set_ylabel(" · ".join(k for k in keys if k != "_all") or "runs")
    legend_outside(axes[0], ncol=len(stages) + 1)
    selection = f"{', '.join(keys) or 'all runs'}"
    set_title(fig, f"Stage breakdown per {selection}: {', '.join(stages)} — bars {statistic}"
              + (f", whiskers {whisker}" if whisker else ""), axes_title=axes[0] if ax is not None else None)
    empty = [f"{stage} ({TIME_LABELS.get(p, p)})" for p in times for stage in stages
             if latency.filter(pl.col("range") == stage)[f"{p}_{statistic}"].is_null().all()]
    text = (f"Each segment is one stage's {statistic}; {statistic}s of stages do not add up to the {statistic}"
            f" of the whole, so the stack is not the batch's {statistic}.")
    if whisker:
        text += f" Whiskers reach each stage's {whisker}."
    if total and (latency["range"] == total).any():
        text += f" ◆ = the enclosing range {total}'s own {statistic}."
    if empty:
        text += f" No GPU work, so no bar: {', '.join(empty)}."
    add_note(fig, text)
    return fig


def _panel(ax: Axes, latency: pl.DataFrame, keys: list[str], groups: pl.DataFrame, stages: list[str], prefix: str,
           statistic: str, whisker: str | None, total: str | None) -> None:
    y = np.arange(groups.height, dtype=float)
    left = np.zeros(groups.height)
    height = 0.7
    for k, stage in enumerate(stages):
        values = _cells(latency, keys, groups, stage, f"{prefix}_{statistic}")
        widths = np.nan_to_num(values)
        color = stage_color(stage, stages)
        ax.barh(y, widths, left=left, height=height, color=color, label=stage, edgecolor="white", linewidth=0.6)
        if whisker:
            ends = _cells(latency, keys, groups, stage, f"{prefix}_{whisker}")
            drawn = ~np.isnan(values) & ~np.isnan(ends)
            offset = (k - (len(stages) - 1) / 2) * height / (len(stages) + 1)
            ax.errorbar(left[drawn] + values[drawn], y[drawn] + offset,
                        xerr=[np.zeros(drawn.sum()), ends[drawn] - values[drawn]], fmt="none",
                        ecolor=_darker(color), elinewidth=1.2, capsize=2.5, label=f"{WHISKER_LABEL}{stage}")
        left = left + widths
    if total and (latency["range"] == total).any():
        marks = _cells(latency, keys, groups, total, f"{prefix}_{statistic}")
        ax.plot(marks, y, linestyle="none", marker="D", markersize=5, color="0.15", label=f"{total} {statistic}")
    ax.set_xlabel(unit_label(f"{TIME_LABELS.get(prefix, prefix)}, {statistic}", "ms"))
    ax.set_xlim(left=0)
    ax.grid(axis="y", visible=False)


def _cells(latency: pl.DataFrame, keys: list[str], groups: pl.DataFrame, stage: str, column: str) -> np.ndarray:
    """``column`` of ``stage`` for each group, in the groups' order (NaN where the group lacks the stage)."""
    rows = latency.filter(pl.col("range") == stage).select(*keys, column)
    if rows.select(keys).is_duplicated().any():
        raise ValueError(f"stage_breakdown: several rows for range {stage!r} in one group (different styles?); "
                         "filter the frame to one style")
    joined = groups.join(rows, on=keys, how="left", nulls_equal=True, maintain_order="left") if keys else rows
    return joined[column].cast(pl.Float64).fill_null(np.nan).to_numpy()


def _darker(color: str, factor: float = 0.6) -> tuple[float, float, float]:
    r, g, b = to_rgb(color)
    return r * factor, g * factor, b * factor
