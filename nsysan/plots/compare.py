"""Comparison forest plot: each group's change against its baseline per stage and metric, with the bootstrap CI,
coloured by verdict (compile modes, pipeline designs, pinned vs pageable, NUMA nodes).

Input: a :func:`nsysan.compare` frame (``change_pct``, ``ci_low_pct``, ``ci_high_pct``, ``verdict``) or a
:func:`nsysan.numa_penalty` frame (``penalty_pct`` instead of ``change_pct``). Points and interval ends are
those cells, unchanged: the change is 100 × (ratio − 1), so 0 % is "same as the baseline".
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nsysan.analyses.compare import METRICS
from nsysan.plots.frames import key_columns, require_columns
from nsysan.plots.style import (
    VERDICT_COLORS,
    add_note,
    group_label,
    new_figure,
    set_title,
    styled,
    unit_label,
)

DEFAULT_METRICS = ("range_ms/mean", "gpu_proj_ms/mean", "bandwidth_gbps/mean", "throughput_per_s/mean")
METRIC_WORDS = {"range_ms": "CPU time", "gpu_proj_ms": "GPU projected time", "gpu_busy_ms": "GPU busy time",
                "bandwidth_gbps": "copy bandwidth", "throughput_per_s": "throughput"}
HIGHER_IS_BETTER = {m.name for m in METRICS if m.higher_is_better}
VERDICT_ORDER = ("slower", "faster", "no clear change", "too few instances")
HEADER = "header"


def _layout(frame: pl.DataFrame) -> tuple[str, list[str], str]:
    """(value column, group keys, kind) of a compare or numa_penalty frame."""
    if "penalty_pct" in frame.columns:
        return "penalty_pct", [*key_columns(frame.columns, "local_numa"), "local_numa", "remote_numa"], "numa"
    require_columns(frame.columns, ["change_pct"], "comparison_forest (a compare or numa_penalty frame)")
    return "change_pct", key_columns(frame.columns, "stage"), "compare"


DIRECTION_SHORT = {"Host-to-Device": "H2D", "Device-to-Host": "D2H", "Device-to-Device": "D2D",
                   "Peer-to-Peer": "P2P", "Host-to-Host": "H2H"}


def _panel_key(metric: str, statistic: str, direction: str | None) -> str:
    return f"{metric}/{statistic}" + (f" ({DIRECTION_SHORT.get(direction, direction)})" if direction else "")


@styled
def comparison_forest(comparison: pl.DataFrame, *, metrics: Sequence[str] | None = None,
                      stages: Sequence[str] | None = None, include_baseline: bool = False) -> Figure:
    """One panel per ``metric/statistic`` (bandwidth: one per copy direction), one row per group and stage:
    the point is ``change_pct`` (``penalty_pct`` for NUMA), the line its ``ci_low_pct`` … ``ci_high_pct``,
    the colour its ``verdict``. ``metrics`` default: those of :data:`DEFAULT_METRICS` the frame holds;
    ``stages`` default: all, in the frame's (pipeline) order. The baseline groups' own rows (always 0 %)
    are left out unless ``include_baseline``; rows without a value (``no baseline``) are left out."""
    value, keys, kind = _layout(comparison)
    require_columns(comparison.columns, [*keys, "stage", "direction", "metric", "statistic", value, "ci_low_pct",
                                         "ci_high_pct", "verdict"], "comparison_forest")
    frame = comparison.filter(pl.col(value).is_not_null())
    if not include_baseline:
        frame = frame.filter(pl.col("verdict") != "baseline")
    wanted = list(metrics) if metrics is not None else [
        m for m in DEFAULT_METRICS if (frame.select(pl.format("{}/{}", "metric", "statistic")) == m).to_series().any()]
    frame = frame.filter(pl.format("{}/{}", "metric", "statistic").is_in(wanted))
    if stages is not None:
        frame = frame.filter(pl.col("stage").is_in(list(stages)))
    if frame.is_empty():
        raise ValueError("comparison_forest: no rows to draw (only baselines, or no such metric/stage)")
    frame = frame.with_columns(_panel=pl.struct("metric", "statistic", "direction").map_elements(
        lambda r: _panel_key(r["metric"], r["statistic"], r["direction"]), return_dtype=pl.String))
    panels = sorted(frame["_panel"].unique().to_list(), key=lambda p: (wanted.index(p.split(" (")[0]), p))
    rows, ticks = _rows(frame, keys, kind)
    size = (3.1 * len(panels) + 3.6, max(3.2, 1.9 + 0.27 * len(ticks)))
    fig, axes = new_figure(1, len(panels), figsize=size, sharey=True)
    for ax, panel in zip(axes[0], panels):
        _draw_panel(ax, frame.filter(pl.col("_panel") == panel), rows, keys, value, panel, kind)
    first = axes[0][0]
    first.set_yticks(range(len(ticks)), [t for t, _ in ticks])
    for label, (_, role) in zip(first.get_yticklabels(), ticks):
        if role == HEADER:
            label.set_fontweight("bold")
    first.set_ylim(len(ticks) - 0.5, -0.5)
    first.set_ylabel("Group (bold) · stage")
    handles = {}
    for ax in axes[0]:
        handles.update({label: h for h, label in zip(*ax.get_legend_handles_labels())})
    axes[0][-1].legend(list(handles.values()), list(handles), title="verdict", loc="upper left",
                       bbox_to_anchor=(1.02, 1), fontsize=8.5, title_fontsize=9)
    set_title(fig, _title(comparison, kind, keys))
    add_note(fig, _note(frame))
    return fig


def _rows(frame: pl.DataFrame, keys: list[str], kind: str) -> tuple[dict[tuple, int], list[tuple[str, str]]]:
    """y position of each (group..., stage), with a bold header row above each group's stages."""
    rows: dict[tuple, int] = {}
    ticks: list[tuple[str, str]] = []
    stage_order = frame["stage"].unique(maintain_order=True).to_list()
    for group in frame.select(keys).unique(maintain_order=True).iter_rows(named=True):
        ticks.append((_group_name(group, keys, kind), HEADER))
        present = frame.filter(*[pl.col(k).eq_missing(v) for k, v in group.items()])["stage"].unique().to_list()
        for stage in (s for s in stage_order if s in present):
            rows[(*group.values(), stage)] = len(ticks)
            ticks.append((f"  {stage}", "stage"))
    return rows, ticks


def _group_name(group: dict, keys: list[str], kind: str) -> str:
    if kind == "numa":
        pair = [k for k in keys if k not in ("local_numa", "remote_numa")]
        return f"{group_label(group, pair)} · node {group['remote_numa']} vs {group['local_numa']}"
    return group_label(group, keys, missing=True)


def _draw_panel(ax: Axes, part: pl.DataFrame, rows: dict[tuple, int], keys: list[str], value: str, panel: str,
                kind: str) -> None:
    ax.axvline(0, color="0.25", linewidth=1)
    for verdict in [*VERDICT_ORDER, *sorted(set(part["verdict"].to_list()) - set(VERDICT_ORDER))]:
        chosen = part.filter(pl.col("verdict") == verdict)
        if chosen.is_empty():
            continue
        y = np.array([rows[r] for r in chosen.select(*keys, "stage").iter_rows()], dtype=float)
        x = chosen[value].to_numpy().astype(float)
        lo = chosen["ci_low_pct"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        hi = chosen["ci_high_pct"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        err = np.nan_to_num(np.vstack([x - lo, hi - x]))
        ax.errorbar(x, y, xerr=err, fmt="o", color=VERDICT_COLORS.get(verdict, "0.5"), ecolor=VERDICT_COLORS.get(
            verdict, "0.5"), elinewidth=2, capsize=3, markersize=5, label=verdict, zorder=3)
    metric, rest = panel.split("/", 1)
    better = "\n(higher is better)" if metric in HIGHER_IS_BETTER else ""
    ax.set_title(f"{METRIC_WORDS.get(metric, metric)} {rest}{better}", fontsize=9, loc="left")
    what = "penalty, remote vs local" if kind == "numa" else "change vs baseline"
    ax.set_xlabel(unit_label(f"{metric} {what}", "%"))
    ax.grid(axis="y", visible=False)
    lo, hi = ax.get_xlim()
    span = max(abs(lo), abs(hi), 1.0)
    ax.set_xlim(min(lo, -0.05 * span), max(hi, 0.05 * span))


def _title(comparison: pl.DataFrame, kind: str, keys: list[str]) -> str:
    if kind == "numa":
        return "NUMA penalty per stage: remote node vs the GPU's local node, with bootstrap CIs"
    baselines = ", ".join(str(b) for b in comparison["baseline"].unique(maintain_order=True).drop_nulls().to_list())
    return (f"Comparison per {', '.join(keys)} against {baselines or 'the baseline'}: change per stage with "
            "bootstrap CIs")


def _note(frame: pl.DataFrame) -> str:
    levels = frame["ci_level"].drop_nulls()
    level = ""
    if levels.len():
        lo, hi = 100 * levels.min(), 100 * levels.max()
        shown = f"{lo:.1f} %" if abs(hi - lo) < 0.05 else f"{lo:.1f}–{hi:.1f} %"
        level = f"Intervals at {shown} per row (adjusted so each comparison's rows hold together). "
    return (level + "Change = 100 × (ratio − 1) to the baseline; for times right of 0 is slower, for bandwidth and "
            "throughput left of 0 is. Colour = verdict (a change is called only when the whole interval clears the "
            "minimum effect).")
