"""GPU timeline of one report: per device and stream the kernels and copies as bars, under the NVTX ranges of
the threads that launched them, over a chosen window — the view people open the nsys GUI for.

:func:`gpu_timeline` draws the frame :func:`nsysan.timeline` prepares (:mod:`nsysan.analyses.timeline`). A lane
with more items than ``bins`` is drawn as ``bins`` time bins whose bar height is the fraction of the bin the
lane was busy (stacked by op kind or range name), and the figure says how many ops were drawn as how many bins.
"""
from __future__ import annotations

import fnmatch
import re

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from nsysan.plots.style import OP_COLORS, add_note, new_figure, set_title, shorten, stage_color, styled, unit_label

_NUMBERED = r"([_\-.:]?)\d+$"


# -- the figure -----------------------------------------------------------------------------------------------
@styled
def gpu_timeline(frame: pl.DataFrame, *, bins: int = 1500, max_bars: int | None = None,
                 label_min_fraction: float = 0.04, ax: Axes | None = None) -> Figure:
    """Draw a :func:`nsysan.timeline` frame: one lane per thread and NVTX nesting level (its ranges), then one lane
    per GPU and stream (kernels, copies, memsets), over ``window_start_ns`` … ``window_end_ns`` on an axis
    in ms since the window's start.

    A lane with at most ``max_bars`` items (default ``bins``) draws one bar per item; a busier lane is
    drawn as ``bins`` time bins, each a bar whose height is the share of the bin the lane's items covered
    (stacked by colour: kernel, copy direction, memset; range name) — and the figure says so. Items
    wider than ``label_min_fraction`` of the window carry their (shortened) name."""
    if frame.is_empty():
        raise ValueError("gpu_timeline: the frame holds nothing to draw")
    start, end = int(frame["window_start_ns"][0]), int(frame["window_end_ns"][0])
    limit = bins if max_bars is None else max_bars
    lanes = _lanes(frame)
    fig_ax = ax
    if ax is None:
        fig, axes = new_figure(1, 1, figsize=(12.5, 1.9 + 0.36 * len(lanes)))
        ax = axes[0][0]
    else:
        fig = ax.figure
    keys_drawn: dict[str, str] = {}
    binned: list[tuple[str, int]] = []
    for y, (label, rows) in enumerate(lanes):
        keys, index = _color_keys(rows)
        colors = [_color(k, rows) for k in keys]
        if rows.height > limit:
            _draw_bins(ax, rows, keys, index, colors, y, label, start, end, bins)
            binned.append((label, rows.height))
        else:
            _draw_bars(ax, rows, [colors[i] for i in index], y, label, start, end, label_min_fraction)
        keys_drawn.update(zip(keys, colors))
    _decorate(ax, lanes, start, end, keys_drawn)
    window = frame["window"][0]
    scale, unit = time_unit(end - start)
    set_title(fig, f"GPU timeline — {frame['report'][0]}: {window}, {(end - start) / scale:,.2f} {unit}",
              axes_title=ax if fig_ax is not None else None)
    add_note(fig, _note(frame, binned, bins, start, end))
    return fig


def time_unit(span_ns: int) -> tuple[float, str]:
    """The time axis's unit for a window: ms up to 10 s, else s."""
    return (1e6, "ms") if span_ns < 10e9 else (1e9, "s")


def _lanes(frame: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """(label, rows) per lane: thread × NVTX level first (by pid, tid), then GPU × stream."""
    lanes = []
    # several ranks (processes of a distributed job): each thread lane names its rank
    ranked = "rank" in frame.columns and frame["rank"].drop_nulls().n_unique() > 1
    rank_of = dict(frame.filter(pl.col("pid").is_not_null()).select("pid", "rank").unique("pid").iter_rows()) \
        if ranked else {}
    frame = frame.select("lane", "kind", "name", "start_ns", "end_ns", "device_id", "stream_id", "pid", "tid",
                         "thread", "level")
    ranges = frame.filter(pl.col("lane") == "thread")
    for (pid, tid, level), rows in sorted(ranges.partition_by("pid", "tid", "level", as_dict=True).items(),
                                          key=lambda kv: tuple(-1 if v is None else v for v in kv[0])):
        name = rows["thread"][0] or "thread"
        rank = f"rank {rank_of[pid]} · " if rank_of.get(pid) is not None else ""
        lanes.append((f"{rank}{shorten(name, 18)} {tid} · NVTX L{level}", rows))
    ops = frame.filter(pl.col("lane") == "gpu")
    for (device, stream), rows in sorted(ops.partition_by("device_id", "stream_id", as_dict=True).items(),
                                         key=lambda kv: tuple(-1 if v is None else v for v in kv[0])):
        lanes.append((f"GPU {device} · stream {stream}", rows))
    return lanes


def _color_keys(rows: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """What colours each item, as (distinct keys, each row's index into them): ops by kind, copies by
    direction; ranges by name with its number merged (``batch_12`` -> ``batch_*``). Decided once per distinct
    (kind, name), never per row, so that a million kernels cost no strings."""
    codes = (rows["kind"].to_physical().cast(pl.Int64).to_numpy() << 32) | rows["name"].to_physical().cast(
        pl.Int64).fill_null(0xFFFFFFFF).to_numpy()
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    kinds = rows["kind"].gather(first).cast(pl.String).to_list()
    names = rows["name"].gather(first).cast(pl.String).to_list()
    per_code = [_key(k, n) for k, n in zip(kinds, names)]
    keys = list(dict.fromkeys(per_code))
    return keys, np.array([keys.index(k) for k in per_code], dtype=np.int64)[inverse]


def _key(kind: str, name: str | None) -> str:
    if kind == "range":
        return re.sub(_NUMBERED, r"\1*", name or "")
    return (name or "memcpy") if kind == "memcpy" else kind


def _color(key: str, rows: pl.DataFrame) -> str:
    if rows["lane"][0] == "gpu":
        return OP_COLORS.get(key, OP_COLORS["memcpy"])
    if fnmatch.fnmatchcase(key, "batch*") or fnmatch.fnmatchcase(key, "warmup*"):
        return "#d5d5d5" if key.startswith("batch") else "#ececec"
    return stage_color(key)


def _rectangles(x0: np.ndarray, x1: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.stack([np.stack([x0, bottom], 1), np.stack([x0, top], 1), np.stack([x1, top], 1),
                     np.stack([x1, bottom], 1)], axis=1)


def _draw_bars(ax: Axes, rows: pl.DataFrame, colors: list[str], y: int, label: str, start: int, end: int,
               label_min_fraction: float) -> None:
    scale, _ = time_unit(end - start)
    x0 = (rows["start_ns"].to_numpy() - start) / scale
    x1 = (rows["end_ns"].to_numpy() - start) / scale
    height = 0.8
    verts = _rectangles(x0, x1, np.full(x0.size, y - height / 2), np.full(x0.size, y + height / 2))
    ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors=colors, linewidths=0.4,
                                     gid=f"bars|{label}"))
    span = (end - start) / scale
    for left, right, name in zip(x0, x1, rows["name"].cast(pl.String).to_list()):
        visible = min(right, span) - max(left, 0.0)
        if name and visible >= label_min_fraction * span:
            chars = max(4, int(visible / span * 150))
            ax.text(max(left, 0.0) + visible / 2, y, shorten(name, chars), ha="center", va="center", fontsize=7,
                    color="0.1", clip_on=True)


def _draw_bins(ax: Axes, rows: pl.DataFrame, keys: list[str], index: np.ndarray, colors: list[str], y: int,
               label: str, start: int, end: int, bins: int) -> None:
    """Per colour key, the share of each time bin the key's items cover, stacked upward from the lane's base."""
    edges = np.linspace(0.0, float(end - start), bins + 1)
    starts = (rows["start_ns"].to_numpy() - start).astype(np.float64)
    ends = (rows["end_ns"].to_numpy() - start).astype(np.float64)
    shares = {}
    for k, key in enumerate(keys):
        chosen = index == k
        shares[key] = np.diff(_covered(starts[chosen], ends[chosen], edges)) / np.diff(edges)
    total = np.sum(list(shares.values()), axis=0)
    overfull = np.where(total > 1, 1 / np.maximum(total, 1e-12), 1.0)  # overlapping items: at most a full bin
    height = 0.8
    edges = edges / time_unit(end - start)[0]
    active = total > 0
    ax.add_collection(PolyCollection(
        _rectangles(edges[:-1][active], edges[1:][active], np.full(active.sum(), y - height / 2),
                    np.full(active.sum(), y + height / 2)),
        facecolors=colors[int(np.argmax([v.sum() for v in shares.values()]))], alpha=0.18, edgecolors="none",
        gid=f"active|{label}"))
    base = np.full(bins, y + height / 2)
    for (key, share), color in zip(shares.items(), colors):
        share = share * overfull
        drawn = share > 0
        top = base - share * height
        verts = _rectangles(edges[:-1][drawn], edges[1:][drawn], top[drawn], base[drawn])
        ax.add_collection(PolyCollection(verts, facecolors=color, edgecolors="none", gid=f"bins|{label}|{key}"))
        base = top


def _covered(starts: np.ndarray, ends: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Σ over items of the part of [start, end] that lies before each point (items may overlap)."""
    s, e = np.sort(starts), np.sort(ends)
    cs = np.concatenate([[0.0], np.cumsum(s)])
    ce = np.concatenate([[0.0], np.cumsum(e)])
    i = np.searchsorted(s, points, side="right")
    j = np.searchsorted(e, points, side="right")
    return (i * points - cs[i]) - (j * points - ce[j])


def _decorate(ax: Axes, lanes: list[tuple[str, pl.DataFrame]], start: int, end: int, keys: dict[str, str]) -> None:
    scale, unit = time_unit(end - start)
    ax.set_xlim(0, (end - start) / scale)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_yticks(range(len(lanes)), [label for label, _ in lanes], fontsize=8)
    ax.set_xlabel(unit_label("Time since window start", unit))
    ax.set_ylabel("Thread (NVTX level) / GPU stream")
    ax.grid(axis="y", visible=False)
    threads = sum(1 for _, rows in lanes if rows["lane"][0] == "thread")
    if 0 < threads < len(lanes):
        ax.axhline(threads - 0.5, color="0.4", linewidth=1)
    ranges = [(f"NVTX {k}", c) for k, c in keys.items() if k not in OP_COLORS]
    ops = [(k if k in ("kernel", "memset") else f"copy {k}", c) for k, c in keys.items() if k in OP_COLORS]
    handles = [Patch(facecolor=color, edgecolor="0.6", linewidth=0.4, label=key) for key, color in ranges + ops]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=min(len(handles), 6), fontsize=8,
              borderaxespad=0)


def _note(frame: pl.DataFrame, binned: list[tuple[str, int]], bins: int, start: int, end: int) -> str:
    ops = int((frame["lane"] == "gpu").sum())
    ranges = frame.height - ops
    text = f"{ops:,} GPU ops and {ranges:,} NVTX ranges in the window."
    if binned:
        items = sum(n for _, n in binned)
        width = (end - start) / bins
        shown = f"{width / 1e3:,.1f} µs" if width < 1e6 else f"{width / 1e6:,.2f} ms"
        text += (f" {items:,} items of {len(binned)} busy lane(s) drawn as {bins * len(binned):,} bins "
                 f"({bins:,} per lane, {shown} each): bar height = share of the bin the lane was busy; "
                 "pale = some activity in the bin.")
    else:
        text += " Every item drawn as its own bar."
    return text
