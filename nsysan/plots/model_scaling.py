"""Scaling: latency, throughput and the transfer-vs-compute share against model depth, width, patch count or
input resolution — where compute starts to dominate the copies ("compute vs memory bound transition").

Inputs: a :func:`nsysan.latency_summary` frame grouped by ``model`` (and any other keys, e.g. ``variant``,
``resolution``) and optionally the matching :func:`nsysan.throughput_summary` frame. Model shape comes
from the model name ``vit{patch}x{depth}x{dim}`` (the runner's own parser), resolution from a metadata
column ``resolution`` when the runs have one.

The two re-arrangements of the frames it draws, :func:`~nsysan.plots.frames.model_shape` and
:func:`~nsysan.plots.frames.transfer_share`, are in :mod:`nsysan.plots.frames`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from nsysan.plots.frames import (
    COMPUTE_STAGES,
    SHAPE_KEYS,
    TRANSFER_STAGES,
    key_columns,
    model_shape,
    require_columns,
    transfer_share,
)
from nsysan.plots.style import (
    add_note,
    group_label,
    new_figure,
    palette,
    set_title,
    styled,
    unit_label,
)

X_LABELS = {"depth": ("Model depth", "layers"), "dim": ("Model width", "hidden size"),
            "patch": ("Patch size", "px"), "patches": ("Patches per image", "count"),
            "resolution": ("Input resolution", "px per side")}
LOG_X = ("patches", "resolution")


@styled
def scaling(latency: pl.DataFrame, throughput: pl.DataFrame | None = None, *, x: str = "depth",
            series: Sequence[str] | str = "auto", time: str = "gpu_proj_ms", batch: str = "batch_*",
            statistic: str = "p50", whisker: str = "p95", transfer: Sequence[str] = TRANSFER_STAGES,
            compute: Sequence[str] = COMPUTE_STAGES) -> Figure:
    """Four panels against ``x`` (``depth``, ``dim``, ``patch``, ``patches`` or ``resolution``), one line per
    series (``series``: key columns; ``"auto"`` = the shape keys and group keys other than ``x`` that vary):

    * batch latency: ``range_ms_{statistic}`` of the ``batch`` range, whiskers to ``range_ms_{whisker}``;
    * throughput: ``samples_per_s`` of ``throughput`` (``batches_per_s`` where batch sizes are unknown);
    * GPU time of the transfer stages (h2d + d2h) and the compute stages (forward), from
      :func:`transfer_share` on ``{time}_mean``;
    * the transfer share of that GPU time, with the 50 % line: where a series crosses it compute dominates.

    Each point is labelled with its model. Rows of the frames are joined on their shared grouping keys."""
    points, keys, rate = _points(latency, throughput, x=x, time=time, batch=batch, statistic=statistic,
                                 whisker=whisker, transfer=transfer, compute=compute)
    lines = _series_keys(points, keys, x, series)
    fig, axes = new_figure(2, 2, figsize=(11.5, 8), sharex=True)
    ax_lat, ax_rate, ax_gpu, ax_share = axes.ravel()
    colors = palette(max(1, points.select(lines).unique().height) if lines else 1)
    groups = points.partition_by(lines, maintain_order=True, as_dict=True) if lines else {(): points}
    for color, (values, rows) in zip(colors, groups.items()):
        rows = rows.sort(x)
        if rows[x].is_duplicated().any():
            raise ValueError(f"scaling: several groups at the same {x} in one series; add keys to series= "
                             f"(rows: {', '.join(rows['model'].to_list())})")
        name = group_label(dict(zip(lines, values)), lines, missing=True) if lines else "all runs"
        xs = rows[x].to_numpy().astype(float)
        _line(ax_lat, xs, rows["_lat"], color, name, upper=rows["_lat_hi"])
        if rate:
            _line(ax_rate, xs, rows["_rate"], color, name)
        _line(ax_gpu, xs, rows["compute_ms"], color, f"compute · {name}")
        _line(ax_gpu, xs, rows["transfer_ms"], color, f"transfer · {name}", style="--", marker="s")
        _line(ax_share, xs, rows["transfer_share_pct"], color, name)
        _crossover(ax_share, xs, rows["transfer_share_pct"].to_numpy(), color, x)
        for axis, column in ((ax_lat, "_lat"), (ax_share, "transfer_share_pct")):
            _label_points(axis, xs, rows[column], rows["model"].to_list())
    _decorate(ax_lat, ax_rate, ax_gpu, ax_share, x=x, time=time, statistic=statistic, whisker=whisker, batch=batch,
              rate=rate, transfer=transfer, compute=compute)
    ticks = np.unique(points[x].to_numpy())
    for axis in axes.ravel():
        if x in LOG_X and (ticks > 0).all():
            axis.set_xscale("log", base=2)  # resolutions and patch counts grow by factors
            axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
    shown = f" · series by {', '.join(lines)}" if lines else ""
    set_title(fig, f"Scaling with {X_LABELS[x][0].lower()}: {', '.join(points['model'].unique(maintain_order=True))}"
              f"{shown}")
    add_note(fig, f"Batch latency: CPU time of the {batch} ranges, {statistic} with whiskers to {whisker}. "
             f"Transfer = {' + '.join(transfer)}, compute = {' + '.join(compute)}: mean {_TIME_WORDS.get(time, time)}"
             f" per batch from the latency summary; share = transfer / (transfer + compute). Below the 50 % line the"
             f" GPU spends more time computing than copying.")
    return fig


_TIME_WORDS = {"gpu_proj_ms": "GPU projected time", "gpu_busy_ms": "GPU busy time", "range_ms": "CPU time"}


def _points(latency: pl.DataFrame, throughput: pl.DataFrame | None, *, x: str, time: str, batch: str,
            statistic: str, whisker: str, transfer: Sequence[str], compute: Sequence[str],
            ) -> tuple[pl.DataFrame, list[str], str | None]:
    """One row per group: its shape, transfer and compute time, batch latency (``_lat``, ``_lat_hi``) and
    rate (``_rate``, named by the third value); the latency summary's keys come second."""
    keys = key_columns(latency.columns, "range")
    if "model" not in keys:
        raise ValueError("scaling needs a latency summary grouped by model (by=['model', ...])")
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {', '.join(X_LABELS)}, not {x!r}")
    points = model_shape(transfer_share(latency, time=time, transfer=transfer, compute=compute))
    if x not in points.columns:
        raise ValueError(f"x={x!r} needs a 'resolution' column in the run metadata (sidecar field)")
    batch_rows = latency.filter(pl.col("range") == batch).select(
        *keys, _lat=f"range_ms_{statistic}", _lat_hi=f"range_ms_{whisker}")
    points = points.join(batch_rows, on=keys, how="left", nulls_equal=True, maintain_order="left")
    rate = None
    if throughput is not None:
        t_keys = [k for k in key_columns(throughput.columns, "runs") if k in keys]
        rate = "samples_per_s" if throughput["samples_per_s"].is_not_null().all() else "batches_per_s"
        points = points.join(throughput.select(*t_keys, _rate=rate), on=t_keys, how="left", nulls_equal=True,
                             maintain_order="left")
    points = points.filter(pl.col(x).is_not_null())
    return points, keys, rate


def _series_keys(points: pl.DataFrame, keys: list[str], x: str, series: Sequence[str] | str) -> list[str]:
    if series != "auto":
        chosen = [series] if isinstance(series, str) else list(series)
        require_columns(points.columns, chosen, "scaling series")
        return chosen
    candidates = [k for k in (*SHAPE_KEYS, "patches", *keys) if k not in (x, "model") and k in points.columns]
    if x in ("patches", "resolution"):
        candidates = [k for k in candidates if k not in ("patches", "resolution")]
    return [k for k in dict.fromkeys(candidates) if points[k].n_unique() > 1]


def _line(ax: Axes, xs: np.ndarray, ys: pl.Series, color: str, label: str, *, upper: pl.Series | None = None,
          style: str = "-", marker: str = "o") -> None:
    y = ys.cast(pl.Float64).fill_null(np.nan).to_numpy()
    ax.plot(xs, y, linestyle=style, marker=marker, color=color, label=label, markersize=5)
    if upper is not None:
        hi = upper.cast(pl.Float64).fill_null(np.nan).to_numpy()
        ax.errorbar(xs, y, yerr=[np.zeros_like(y), hi - y], fmt="none", ecolor=color, capsize=3, alpha=0.7,
                    label=f"_whisker:{label}")


def _crossover(ax: Axes, xs: np.ndarray, share: np.ndarray, color: str, x: str) -> None:
    """Mark the first point of a series from which compute dominates (share < 50 %) after one where it did not."""
    for i in range(1, len(xs)):
        if share[i - 1] >= 50 > share[i]:
            ax.axvline(xs[i], color=color, linestyle=":", linewidth=1.2)
            ax.annotate(f"compute > transfer\nfrom {x} {xs[i]:g}", (xs[i], 50), xytext=(4, 6),
                        textcoords="offset points", fontsize=8, color=color)
            return


def _label_points(ax: Axes, xs: np.ndarray, ys: pl.Series, models: list[str]) -> None:
    for xv, yv, model in zip(xs, ys.cast(pl.Float64).fill_null(np.nan).to_numpy(), models):
        if np.isfinite(yv):
            ax.annotate(model, (xv, yv), xytext=(3, 4), textcoords="offset points", fontsize=7, color="0.35")


def _decorate(ax_lat: Axes, ax_rate: Axes, ax_gpu: Axes, ax_share: Axes, *, x: str, time: str, statistic: str,
              whisker: str, batch: str, rate: str | None, transfer: Sequence[str], compute: Sequence[str]) -> None:
    quantity, unit = X_LABELS[x]
    ax_lat.set_ylabel(unit_label(f"Batch latency, {statistic}", "ms"))
    ax_lat.set_ylim(bottom=0)
    if rate:
        ax_rate.set_ylabel(unit_label("Throughput", "samples/s" if rate == "samples_per_s" else "batches/s"))
        ax_rate.set_ylim(bottom=0)
    else:
        ax_rate.text(0.5, 0.5, "no throughput frame given", ha="center", va="center", transform=ax_rate.transAxes,
                     color="0.4")
        ax_rate.set_ylabel(unit_label("Throughput", "samples/s"))
    ax_gpu.set_ylabel(unit_label(f"{_TIME_WORDS.get(time, time)} per batch, mean", "ms"))
    ax_gpu.set_ylim(bottom=0)
    ax_share.set_ylabel(unit_label("Transfer share of GPU time", "%"))
    ax_share.set_ylim(0, 105)
    ax_share.axhline(50, color="0.3", linewidth=1, linestyle="--")
    for axis in (ax_gpu, ax_share):
        axis.set_xlabel(unit_label(quantity, unit))
    for axis in (ax_lat, ax_rate, ax_gpu, ax_share):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="best")
