"""NUMA penalty heatmap: remote-node penalty per pair group (model × GPU × node pair) and stage, CIs in the cells.

Input: a :func:`nsysan.numa_penalty` frame. Cell values are :func:`nsysan.numa_heatmap` of it (the
analysis's own pivot), the intervals are the frame's ``ci_low_pct`` / ``ci_high_pct``. When the runs cannot
be compared across nodes, :func:`nsysan.numa_penalty` raises :class:`nsysan.NumaNotComparable`: pass that
exception (or its sentence) and the figure is that sentence, plainly.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from nsysan.analyses.compare import METRICS
from nsysan.analyses.numa import numa_heatmap
from nsysan.engine import Result
from nsysan.errors import NsysanError
from nsysan.plots.compare import METRIC_WORDS
from nsysan.plots.style import add_note, group_label, new_figure, set_title, statement, styled, unit_label

MEAN_COLUMN = "mean_penalty_pct"
_BOLD_VERDICTS = ("slower", "faster")


@styled
def numa_penalty_heatmap(penalty: Result | pl.DataFrame | NsysanError | str, *, metric: str = "range_ms",
                         statistic: str = "mean", direction: str | None = None, across: str = "stage",
                         vmax: float | None = None) -> Figure:
    """Heatmap of ``penalty_pct`` of ``metric``/``statistic`` (the cells of :func:`nsysan.numa_heatmap`), each
    cell annotated with its CI and bold where the verdict calls a change.

    ``across="stage"``: one heatmap, one row per pair group and remote node (most NUMA-sensitive first, as
    ``numa_heatmap`` sorts), one column per stage plus the mean over stages. ``across=<key>`` (e.g.
    ``"gpu"``): one panel per stage, columns = values of that metadata key, rows = the other pair keys
    (model × GPU per stage). Red = the remote node is worse (for bandwidth and throughput: lower).
    ``penalty`` is the :func:`nsysan.numa` result or its frame; a result without a frame (one NUMA node, no
    pair), or the :class:`nsysan.analyses.numa.NumaNotComparable` that ``numa_penalty`` raises (or its message),
    gives a figure that states why instead of an empty map."""
    if isinstance(penalty, Result):
        penalty = penalty.frame if not penalty.frame.is_empty() else " ".join(penalty.notes) or "no NUMA penalty"
    if not isinstance(penalty, pl.DataFrame) or penalty.is_empty():
        return _statement(penalty)
    wide = numa_heatmap(penalty, metric=metric, statistic=statistic, direction=direction)
    index = wide.columns[: wide.columns.index(MEAN_COLUMN)]
    stages = wide.columns[wide.columns.index(MEAN_COLUMN) + 1:]
    ci = _intervals(penalty, index, metric, statistic, direction)
    worse_low = any(m.higher_is_better for m in METRICS if m.name == metric)
    values = wide.select(*stages).to_numpy().astype(float)
    limit = vmax or max(1.0, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0)
    norm = TwoSlopeNorm(0.0, -limit, limit)
    cmap = "RdBu" if worse_low else "RdBu_r"
    if across == "stage":
        fig = _single(wide, index, [*stages, MEAN_COLUMN], ci, norm, cmap)
    else:
        fig = _per_stage(wide, index, list(stages), across, ci, norm, cmap)
    words = METRIC_WORDS.get(metric, metric) + (f" ({direction})" if direction else "")
    set_title(fig, f"NUMA penalty, remote vs local node: {words} {statistic} per "
                   f"{'stage' if across == 'stage' else f'stage and {across}'}")
    basis = sorted(set(penalty["local_basis"].drop_nulls().to_list()))
    add_note(fig, f"Cell = penalty_pct = 100 × (remote / local − 1); below it the bootstrap CI ({_level(penalty)});"
             f" bold = the verdict calls a change. {'Lower' if worse_low else 'Higher'} is worse. Local node: "
             f"{'; '.join(basis) or 'n/a'}.")
    return fig


def _statement(problem: pl.DataFrame | NsysanError | str) -> Figure:
    text = str(problem) if not isinstance(problem, pl.DataFrame) else "no NUMA penalty rows to draw"
    fig, axes = new_figure(1, 1, figsize=(8, 2.2))
    statement(fig, axes[0][0], text)
    set_title(fig, "NUMA penalty: nothing to compare")
    return fig


def _intervals(penalty: pl.DataFrame, index: Sequence[str], metric: str, statistic: str,
               direction: str | None) -> dict[tuple, tuple[float | None, float | None, str]]:
    """(ci_low_pct, ci_high_pct, verdict) per (index values..., heatmap column)."""
    rows = penalty.filter((pl.col("metric") == metric) & (pl.col("statistic") == statistic))
    if direction is not None:
        rows = rows.filter(pl.col("direction") == direction)
    label = (pl.when(pl.col("direction").is_null()).then(pl.col("stage"))
             .otherwise(pl.format("{} ({})", "stage", "direction")))
    rows = rows.with_columns(_column=label)
    return {(*r[:-4], r[-4]): (r[-3], r[-2], r[-1])
            for r in rows.select(*index, "_column", "ci_low_pct", "ci_high_pct", "verdict").iter_rows()}


def _row_label(row: dict, index: Sequence[str], skip: str | None = None) -> str:
    pair = [k for k in index if k not in ("local_numa", "remote_numa", skip)]
    return f"{group_label(row, pair)} · node {row['remote_numa']} vs {row['local_numa']}"


def _single(wide: pl.DataFrame, index: Sequence[str], columns: list[str], ci: dict, norm: TwoSlopeNorm,
            cmap: str) -> Figure:
    matrix = wide.select(columns).to_numpy().astype(float)
    labels = [_row_label(r, index) for r in wide.select(index).iter_rows(named=True)]
    keys = wide.select(index).rows()
    fig, axes = new_figure(1, 1, figsize=(2.2 + 1.45 * len(columns) + 0.07 * max(map(len, labels)),
                                          1.9 + 0.55 * len(labels)))
    ax = axes[0][0]
    cells = [[ci.get((*key, column)) for column in columns] for key in keys]
    image = _draw(ax, matrix, cells, norm, cmap, labels,
                  [c if c != MEAN_COLUMN else "mean over\nstages" for c in columns])
    ax.axvline(len(columns) - 1.5, color="white", linewidth=4)
    ax.set_xlabel("Stage")
    ax.set_ylabel("Pair group · remote vs local node")
    fig.colorbar(image, ax=ax, label=unit_label("Penalty", "%"), shrink=0.9)
    return fig


def _per_stage(wide: pl.DataFrame, index: Sequence[str], stages: list[str], across: str, ci: dict,
               norm: TwoSlopeNorm, cmap: str) -> Figure:
    if across not in index:
        raise ValueError(f"across={across!r} is not a pair key of the penalty frame; keys: {', '.join(index)}")
    values = wide[across].unique(maintain_order=True).sort().to_list()
    row_keys = [k for k in index if k != across]
    rows = wide.select(row_keys).unique(maintain_order=True)
    labels = [_row_label(r, index, skip=across) for r in rows.iter_rows(named=True)]
    ncols = min(3, len(stages))
    nrows = -(-len(stages) // ncols)
    size = (1.5 + ncols * (1.0 + 1.1 * len(values)) + 0.06 * max(map(len, labels)),
            1.6 + nrows * (0.9 + 0.5 * len(labels)))
    fig, axes = new_figure(nrows, ncols, figsize=size, sharey=True)
    for ax, stage in zip(axes.ravel(), stages):
        matrix = np.full((rows.height, len(values)), np.nan)
        cells: list[list] = [[None] * len(values) for _ in range(rows.height)]
        for i, row in enumerate(rows.iter_rows(named=True)):
            for j, value in enumerate(values):
                hit = wide.filter(*[pl.col(k).eq_missing(v) for k, v in row.items()], pl.col(across).eq_missing(value))
                if hit.height:
                    matrix[i, j] = hit[stage][0]
                    key = tuple(hit.select(index).row(0))
                    cells[i][j] = ci.get((*key, stage))
        image = _draw(ax, matrix, cells, norm, cmap, labels, [f"{across}={v}" for v in values])
        ax.set_title(stage, loc="left", fontsize=10)
        ax.set_xlabel(across)
    for ax in axes.ravel()[len(stages):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("Pair group")
    fig.colorbar(image, ax=list(axes.ravel()[:len(stages)]), label=unit_label("Penalty", "%"), shrink=0.8)
    return fig


def _draw(ax: Axes, matrix: np.ndarray, cells: list[list], norm: TwoSlopeNorm, cmap: str, row_labels: list[str],
          column_labels: list[str]) -> AxesImage:
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            if not np.isfinite(value):
                ax.text(j, i, "—", ha="center", va="center", color="0.5", fontsize=9)
                continue
            extra = cells[i][j]
            text = f"{value:+.1f} %"
            weight = "normal"
            if extra is not None and extra[0] is not None:
                text += f"\n[{extra[0]:+.1f}, {extra[1]:+.1f}]"
                weight = "bold" if extra[2] in _BOLD_VERDICTS else "normal"
            dark = abs(norm(value) - 0.5) > 0.33
            ax.text(j, i, text, ha="center", va="center", fontsize=8.5, fontweight=weight,
                    color="white" if dark else "0.1")
    ax.set_xticks(range(len(column_labels)), column_labels, rotation=0)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.grid(False)
    ax.tick_params(length=0)
    return image


def _level(penalty: pl.DataFrame) -> str:
    levels = penalty["ci_level"].drop_nulls()
    if not levels.len():
        return "no interval"
    lo, hi = 100 * levels.min(), 100 * levels.max()
    return f"{lo:.1f} % per cell" if abs(hi - lo) < 0.05 else f"{lo:.1f}–{hi:.1f} % per cell"
