"""Copy bandwidth: GB/s per group, direction and memory kinds (pinned, pageable, device), with the copy-size
histogram underneath.

Inputs: a :func:`nsysan.bandwidth_summary` frame and optionally the matching :func:`nsysan.copy_size_histogram`
frame (same ``by`` keys). Bar lengths are the summary's ``bandwidth_gbps`` cells (or another rate column);
histogram bars are the histogram's ``copies`` cells (or ``bytes_total``, ``bandwidth_gbps``). Rows the
summary flags (pageable memory in async copies, tiny copies) are hatched.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch

from nsysan.plots.compare import DIRECTION_SHORT
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

COPY_KEYS = ("direction", "src_kind", "dst_kind")
RATE_WORDS = {"bandwidth_gbps": "Bandwidth, bytes / summed copy time",
              "bandwidth_union_gbps": "Bandwidth, bytes / union of copy time",
              "copy_gbps_p50": "Per-copy rate, p50", "copy_gbps_p95": "Per-copy rate, p95"}
HIST_VALUES = {"copies": ("Copies", "count"), "bytes_total": ("Bytes copied", "B"),
               "bandwidth_gbps": ("Bandwidth per size bucket", "GB/s")}
FLAG_HATCH = "///"
#: What the summary's flags say, in a few words for the note (keyed by a word of the flag).
FLAG_WORDS = {
    "pageable": "pageable memory in async copies: staged by the driver, neither async nor full speed (pin the host "
                "buffer)",
    "tiny": "tiny copies dominate (batch them)",
}


def _kind(src: str | None, dst: str | None) -> str:
    return f"{src or '—'} → {dst or '—'}"


def _directions(frame: pl.DataFrame, directions: Sequence[str] | None, include_memset: bool) -> list[str]:
    present = frame["direction"].unique(maintain_order=True).to_list()
    if directions is not None:
        return [d for d in directions if d in present]
    order = ["Host-to-Device", "Device-to-Host", "Device-to-Device", "Peer-to-Peer"]
    chosen = [d for d in order if d in present] + sorted(d for d in present if d not in order and d != "Memset")
    return chosen + (["Memset"] if include_memset and "Memset" in present else [])


@styled
def bandwidth_chart(summary: pl.DataFrame, histogram: pl.DataFrame | None = None, *,
                    directions: Sequence[str] | None = None, include_memset: bool = False,
                    rate: str = "bandwidth_gbps", histogram_value: str = "copies") -> Figure:
    """One column per copy direction: bars of ``rate`` (GB/s) per group (the summary's keys before
    ``direction``, with ``stage`` when the summary is by stage) and memory kinds (``src_kind → dst_kind``),
    and, given ``histogram``, below each the copy-size histogram of that direction: ``histogram_value`` per
    power-of-two size bucket (``size_bucket`` labels, ordered by ``size_from_bytes``), one bar per group and
    memory kinds. Memsets (direction ``Memset``) are left out unless ``include_memset``."""
    keys = [k for k in key_columns(summary.columns, "direction")]
    require_columns(summary.columns, [*COPY_KEYS, rate, "flags"], "bandwidth_chart")
    chosen = _directions(summary, directions, include_memset)
    if not chosen:
        raise ValueError("bandwidth_chart: no copies in the chosen directions")
    rows = 2 if histogram is not None else 1
    groups = summary.select(keys).unique(maintain_order=True)
    kinds = summary.filter(pl.col("direction").is_in(chosen)).select("src_kind", "dst_kind").unique(
        maintain_order=True).rows()
    rate_height = 0.9 + 0.28 * groups.height * max(1, len(kinds))
    hist_height = 3.4
    fig, axes = new_figure(rows, len(chosen), figsize=(5.2 * len(chosen) + 1.8, 1.4 + rate_height + (
        hist_height if histogram is not None else 0)), height_ratios=[rate_height, hist_height][:rows])
    colors = dict(zip(kinds, palette(len(kinds))))
    labels = [group_label(r, keys, missing=False) for r in groups.iter_rows(named=True)]
    norm = _shared_norm(histogram.filter(pl.col("direction").is_in(chosen))[histogram_value]) \
        if histogram is not None else None
    for j, direction in enumerate(chosen):
        _rate_panel(axes[0][j], summary.filter(pl.col("direction") == direction), keys, groups, labels, kinds,
                    colors, rate, direction, show_labels=j == 0)
        if histogram is not None:
            _histogram_panel(axes[1][j], histogram.filter(pl.col("direction") == direction), keys, histogram_value,
                             direction, show_labels=j == 0, norm=norm)
    handles = [Patch(facecolor=colors[k], label=_kind(*k)) for k in kinds]
    if (summary.filter(pl.col("direction").is_in(chosen))["flags"].is_not_null()).any():
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch=FLAG_HATCH, label="flagged (see note)"))
    axes[0][-1].legend(handles=handles, title="memory kinds", loc="upper left", bbox_to_anchor=(1.02, 1),
                       fontsize=8.5, title_fontsize=9)
    set_title(fig, f"Copy bandwidth per {', '.join(keys) or 'run'}, direction and memory kind"
              + (" — with copy sizes" if histogram is not None else ""))
    add_note(fig, _note(summary, chosen, include_memset))
    return fig


def _rate_panel(ax: Axes, part: pl.DataFrame, keys: list[str], groups: pl.DataFrame, labels: list[str],
                kinds: list[tuple], colors: dict, rate: str, direction: str, *, show_labels: bool) -> None:
    kinds = [k for k in kinds if part.filter(pl.col("src_kind").eq_missing(k[0]),
                                             pl.col("dst_kind").eq_missing(k[1])).height]
    height = 0.8 / max(1, len(kinds))
    for k, kind in enumerate(kinds):
        rows = part.filter(pl.col("src_kind").eq_missing(kind[0]), pl.col("dst_kind").eq_missing(kind[1]))
        joined = groups.join(rows, on=keys, how="left", nulls_equal=True, maintain_order="left") if keys else rows
        values = joined[rate].cast(pl.Float64).fill_null(np.nan).to_numpy()
        present = ~np.isnan(values)
        y = np.arange(groups.height) + (k - (len(kinds) - 1) / 2) * height
        flagged = joined["flags"].is_not_null().to_numpy()
        bars = ax.barh(y[present], values[present], height=height * 0.92, color=colors[kind],
                       label=f"{direction}: {_kind(*kind)}", edgecolor="0.3", linewidth=0.4)
        for bar, flag, value in zip(bars, flagged[present], values[present]):
            if flag:
                bar.set_hatch(FLAG_HATCH)
            ax.annotate(f"{value:.1f}", (value, bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7.5, color="0.2")
    ax.set_yticks(range(groups.height), labels if show_labels else [""] * groups.height)
    if show_labels:
        ax.set_ylabel(" · ".join(keys) or "runs")
    ax.set_ylim(groups.height - 0.5, -0.5)
    ax.set_xlabel(unit_label(RATE_WORDS.get(rate, rate), "GB/s"))
    ax.set_title(f"{direction} ({DIRECTION_SHORT.get(direction, direction)})", loc="left", fontsize=10)
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.12)


def _histogram_panel(ax: Axes, part: pl.DataFrame, keys: list[str], value: str, direction: str,
                     show_labels: bool, norm: LogNorm | None) -> AxesImage | None:
    """The copy-size histogram of one direction as a table: one row per group and memory kinds, one column
    per size bucket, each cell the histogram's ``value`` (written in it; shade on a log scale)."""
    require_columns(part.columns, ["size_from_bytes", "size_bucket", value, "src_kind", "dst_kind"],
                    "bandwidth_chart histogram")
    buckets = part.select("size_from_bytes", "size_bucket").unique().sort("size_from_bytes")
    series = part.select(*keys, "src_kind", "dst_kind").unique(maintain_order=True)
    matrix = np.full((series.height, buckets.height), np.nan)
    for i, row in enumerate(series.iter_rows(named=True)):
        rows = part.filter(*[pl.col(k).eq_missing(v) for k, v in row.items()])
        joined = buckets.join(rows.select("size_from_bytes", value), on="size_from_bytes", how="left",
                              maintain_order="left")
        matrix[i] = joined[value].cast(pl.Float64).fill_null(np.nan).to_numpy()
    labels = [f"{group_label(r, keys)} · {_kind(r['src_kind'], r['dst_kind'])}" for r in series.iter_rows(named=True)]
    image = None
    if np.isfinite(matrix).any():
        image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap="Blues", norm=norm)
        for i, j in zip(*np.nonzero(np.isfinite(matrix))):
            cell = matrix[i, j]
            dark = norm is not None and cell > 0 and norm(cell) > 0.6
            ax.text(j, i, _short_number(cell), ha="center", va="center", fontsize=7.5,
                    color="white" if dark else "0.15")
    ax.set_xticks(range(buckets.height), buckets["size_bucket"].to_list(), rotation=40, ha="right", fontsize=7.5)
    ax.set_yticks(range(series.height), labels, fontsize=7.5)
    ax.tick_params(length=0)
    ax.grid(False)
    ax.set_xlabel(unit_label("Copy size bucket", "B"))
    ax.set_ylabel("Group · memory kinds")
    quantity, unit = HIST_VALUES.get(value, (value, "?"))
    ax.set_title(f"{quantity} ({unit}) per copy size, {DIRECTION_SHORT.get(direction, direction)}", loc="left",
                 fontsize=9.5)
    return image


def _shared_norm(values: pl.Series) -> LogNorm | None:
    """One log scale for every histogram panel, so that shades compare across directions."""
    positive = values.cast(pl.Float64).filter(values > 0)
    if positive.is_empty():
        return None
    lo, hi = float(positive.min()), float(positive.max())
    return LogNorm(lo, max(hi, lo * 10))


def _short_number(value: float) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.3g}G"
    if value >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def _note(summary: pl.DataFrame, chosen: list[str], include_memset: bool) -> str:
    flags = summary.filter(pl.col("direction").is_in(chosen), pl.col("flags").is_not_null())
    text = "GB/s = bytes / summed copy time (1 GB = 10⁹ B), as nsys counts it."
    if "Memset" in summary["direction"].to_list() and not include_memset:
        text += " Memsets left out (include_memset=True to show them)."
    if flags.height:
        found = " ".join(flags["flags"].to_list())
        kinds = [words for key, words in FLAG_WORDS.items() if key in found]
        text += f" Hatched: {flags.height} flagged row(s) — {'; '.join(kinds)}."
    return text
