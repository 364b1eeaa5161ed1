"""GPU utilization: busy and idle shares per window, the distribution of idle gaps, and the top kernels.

Inputs are the frames of :mod:`nsysan.analyses.utilization`: :func:`nsysan.utilization_summary` (busy/idle),
the per-report :func:`nsysan.gpu_utilization` rows (their ``gaps_ns`` lists, for the gap distribution)
and :func:`nsysan.top_kernels`. The shares it stacks come from
:func:`~nsysan.plots.frames.busy_breakdown`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from nsysan.analyses.utilization import LAUNCH_GAP_NS, SHORT_GAP_NS
from nsysan.plots.frames import busy_breakdown, key_columns, require_columns
from nsysan.plots.style import (
    OP_COLORS,
    add_note,
    group_label,
    new_figure,
    palette,
    set_title,
    shorten,
    styled,
    unit_label,
)

UNIT_KEYS = ("device_id", "stream_id")
SEGMENTS = (("kernel_pct", "kernels (with or without copies)", OP_COLORS["kernel"]),
            ("copy_only_pct", "copies only", OP_COLORS["Host-to-Device"]),
            ("idle_pct", "idle", "#e3e3e3"))


def _unit_keys(frame: pl.DataFrame, first_value: str) -> tuple[list[str], list[str]]:
    """(group keys, device/stream keys) of a utilization frame: the columns before ``first_value``."""
    keys = key_columns(frame.columns, first_value)
    return [k for k in keys if k not in UNIT_KEYS], [k for k in keys if k in UNIT_KEYS]


def _row_label(row: dict, keys: list[str], units: list[str]) -> str:
    where = " · ".join(f"GPU {row[k]}" if k == "device_id" else f"stream {row[k]}" for k in units)
    return " · ".join(p for p in (group_label(row, keys) if keys else "", where) if p)


@styled
def busy_idle(summary: pl.DataFrame) -> Figure:
    """One stacked bar per group, GPU (and stream) and window of ``summary``: the shares of
    :func:`busy_breakdown` (kernels, copies only, idle; %), labelled with the window's length
    (``window_ns``), the median idle gap (``gap_us_p50``) and "launch-bound" where ``launch_bound``.
    Several windows (e.g. summaries for ``capture``, ``batches`` and ``forward`` stacked with
    ``pl.concat``) give one bar each."""
    keys, units = _unit_keys(summary, "window")
    frame = busy_breakdown(summary)
    labels = [_row_label(r, keys, units) + f" · {r['window']}" for r in frame.iter_rows(named=True)]
    fig, axes = new_figure(1, 1, figsize=(11, 1.9 + 0.42 * frame.height))
    ax = axes[0][0]
    y = np.arange(frame.height)
    left = np.zeros(frame.height)
    for column, name, color in SEGMENTS:
        values = frame[column].cast(pl.Float64).fill_null(0.0).to_numpy()
        ax.barh(y, values, left=left, height=0.68, color=color, label=name, edgecolor="white", linewidth=0.6)
        left += values
    for i, row in enumerate(frame.iter_rows(named=True)):
        text = f"{row['window_ns'] / 1e6:,.1f} ms window"
        if row["gap_us_p50"] is not None:
            text += f" · median gap {row['gap_us_p50']:,.0f} µs"
        if row["launch_bound"]:
            text += " · launch-bound"
        ax.annotate(text, (100, i), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8,
                    color="#b03a2e" if row["launch_bound"] else "0.25", annotation_clip=False)
    ax.set_yticks(y, labels)
    ax.set_ylabel(" · ".join([*keys, "GPU" if units else "", "window"]).replace(" ·  ·", " ·"))
    ax.set_ylim(frame.height - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel(unit_label("Share of the window", "%"))
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=3, fontsize=8.5, borderaxespad=0)
    windows = ", ".join(frame["window"].unique(maintain_order=True).cast(pl.String).to_list())
    set_title(fig, f"GPU busy and idle per {', '.join([*keys, *units]) or 'GPU'} — window: {windows}")
    add_note(fig, "Kernels = utilization_pct (time a kernel ran, copies or not); copies only = busy_pct − "
                  "utilization_pct; idle = idle_pct. Busy times are unions of op intervals inside the window, so "
                  "concurrent ops count once. Launch-bound: idle ≥ 50 % of the window, mostly in gaps < 100 µs.")
    return fig


@styled
def idle_gaps(parts: pl.DataFrame, *, by: Sequence[str] = ("report",), weight: str = "time",
              bins: int = 40) -> Figure:
    """Distribution of the idle gaps of :func:`nsysan.gpu_utilization` rows (their ``gaps_ns`` lists), pooled
    per ``by`` group and GPU (and stream): a step histogram on log-spaced gap lengths, one line per group,
    weighted by gap length (``weight="time"``: where the idle time goes) or counting gaps
    (``"count"``). The 10 µs and 100 µs lines are the short-gap and launch-gap thresholds of
    ``nsysan utilization``."""
    if weight not in ("time", "count"):
        raise ValueError(f"weight must be 'time' or 'count', not {weight!r}")
    units = [k for k in UNIT_KEYS if k in parts.columns]
    require_columns(parts.columns, [*by, *units, "gaps_ns"], "idle_gaps")
    gaps = parts.select(*by, *units, "gaps_ns").explode("gaps_ns").drop_nulls("gaps_ns")
    fig, axes = new_figure(1, 1, figsize=(10, 5))
    ax = axes[0][0]
    if gaps.is_empty():
        ax.text(0.5, 0.5, "no idle gaps in these windows", ha="center", va="center", transform=ax.transAxes)
    else:
        us = gaps["gaps_ns"].cast(pl.Float64) / 1e3
        low = max(float(us.filter(us > 0).min() or 0.001), 0.001)
        edges = np.geomspace(low * 0.999, float(us.max()) * 1.001, bins + 1)  # margins: every gap falls inside
        groups = gaps.partition_by([*by, *units], maintain_order=True, as_dict=True)
        for color, (values, rows) in zip(palette(len(groups)), groups.items()):
            lengths = rows["gaps_ns"].cast(pl.Float64).to_numpy() / 1e3
            weights = lengths / 1e3 if weight == "time" else None
            label = _row_label(dict(zip([*by, *units], values)), list(by), units) + f" ({lengths.size:,} gaps)"
            ax.hist(lengths, bins=edges, weights=weights, histtype="step", linewidth=1.6, color=color, label=label)
        ax.set_xscale("log")
        for threshold, words in ((SHORT_GAP_NS, "short gap"), (LAUNCH_GAP_NS, "launch gap")):
            ax.axvline(threshold / 1e3, color="0.35", linestyle="--", linewidth=1)
            ax.annotate(f"{words} < {threshold / 1e3:g} µs", (threshold / 1e3, 1), xycoords=("data", "axes fraction"),
                        xytext=(-3, -4), textcoords="offset points", rotation=90, ha="right", va="top", fontsize=8,
                        color="0.35")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_xlabel(unit_label("Idle gap length", "µs"))
    ax.set_ylabel(unit_label("Idle time in gaps of this length", "ms") if weight == "time"
                  else unit_label("Idle gaps", "count"))
    window = ", ".join(parts["window"].unique(maintain_order=True).to_list()) if "window" in parts.columns else ""
    set_title(fig, f"GPU idle gaps per {', '.join([*by, *units])}" + (f" — window: {window}" if window else ""))
    add_note(fig, "Idle gaps: the stretches between consecutive busy intervals (all ops merged) inside a window "
                  "interval. Gaps of 10–100 µs are the CPU issuing the next op (launch-bound eager code); gaps of "
                  "milliseconds are stalls on other CPU work (preprocessing, synchronisation).")
    return fig


@styled
def top_kernels_chart(top: pl.DataFrame, *, top_n: int | None = 10, name_width: int = 42) -> Figure:
    """One panel per group of a :func:`nsysan.top_kernels` frame (its keys before ``name``): horizontal bars of
    ``busy_share_pct`` for its kernels in the frame's order (most time first; at most ``top_n``), each labelled
    with ``time_ns`` (ms) and ``instances``. Long kernel names are cut with an ellipsis."""
    keys, units = _unit_keys(top, "name")
    require_columns(top.columns, ["name", "instances", "time_ns", "busy_share_pct"], "top_kernels_chart")
    groups = top.partition_by([*keys, *units], maintain_order=True, as_dict=True) if keys or units else {(): top}
    ncols = 1 if len(groups) == 1 else 2
    nrows = -(-len(groups) // ncols)
    shown = min(top_n or 10**9, max(g.height for g in groups.values()))
    fig, axes = new_figure(nrows, ncols, figsize=(7.2 * ncols, 1.3 + nrows * (0.6 + 0.27 * shown)))
    for ax, (values, rows) in zip(axes.ravel(), groups.items()):
        rows = rows.head(top_n) if top_n else rows
        y = np.arange(rows.height)
        shares = rows["busy_share_pct"].cast(pl.Float64).fill_null(0.0).to_numpy()
        ax.barh(y, shares, height=0.7, color=OP_COLORS["kernel"])
        for i, row in enumerate(rows.iter_rows(named=True)):
            ax.annotate(f"{row['time_ns'] / 1e6:,.2f} ms · {row['instances']:,}×", (shares[i], i), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7.5, color="0.25")
        ax.set_yticks(y, [shorten(n, name_width) for n in rows["name"].to_list()], fontsize=7.5)
        ax.set_ylabel("Kernel")
        ax.set_ylim(max(rows.height, 1) - 0.5, -0.5)
        ax.set_xlabel(unit_label("Share of kernel busy time", "%"))
        ax.set_title(_row_label(dict(zip([*keys, *units], values)), keys, units), loc="left", fontsize=9.5)
        ax.margins(x=0.25)
        ax.grid(axis="y", visible=False)
    for ax in axes.ravel()[len(groups):]:
        ax.set_axis_off()
    set_title(fig, f"Top kernels by time inside the window per {', '.join([*keys, *units]) or 'GPU'}")
    add_note(fig, "Share = the kernel's summed time inside the window / the window's kernel busy time (a union); "
                  "shares add up to more than 100 % only where kernels ran concurrently.")
    return fig
