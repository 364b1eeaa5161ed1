"""The re-arrangements of analysis frames that the figures draw and no analysis returns, in polars only (no
matplotlib): the report computes them in its own process while workers draw.

* :func:`model_shape`: ``patch``, ``depth``, ``dim`` parsed from ``model`` (and ``patches`` from ``resolution``),
  and :func:`scaling_axis`, the shape key along which a scaling figure has enough points;
* :func:`transfer_share`: transfer vs compute GPU time per group, from stage means already in a latency frame;
* :func:`busy_breakdown`: the utilization summary's overlapping shares as three that add up to 100 %
  (kernel busy time includes time copies ran too).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import polars as pl

from nsysan.runner.config import MODEL_NAME

SHAPE_KEYS = ("patch", "depth", "dim")
TRANSFER_STAGES = ("h2d", "d2h")
COMPUTE_STAGES = ("forward",)


def key_columns(frame_columns: Sequence[str], first_value_column: str) -> list[str]:
    """The grouping keys of an analysis frame: its columns before ``first_value_column`` (the analyses put
    their ``by`` keys first)."""
    if first_value_column not in frame_columns:
        raise ValueError(f"expected a column {first_value_column!r}; columns: {', '.join(frame_columns)}")
    return list(frame_columns[: list(frame_columns).index(first_value_column)])


def require_columns(frame_columns: Sequence[str], needed: Iterable[str], what: str) -> None:
    missing = [c for c in needed if c not in frame_columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {', '.join(missing)}; the frame has {', '.join(frame_columns)}")


def model_shape(frame: pl.DataFrame, *, model: str = "model", resolution: str = "resolution") -> pl.DataFrame:
    """``frame`` with ``patch``, ``depth``, ``dim`` (Int64) parsed from the ``model`` column
    (``vit{patch}x{depth}x{dim}``, null where the name does not follow it) and, when ``frame`` has a
    ``resolution`` column, ``patches`` = (resolution // patch)² (null for patch 0, the no-op model)."""
    require_columns(frame.columns, [model], "model_shape")
    names = frame[model].cast(pl.String).to_list()
    parsed = [MODEL_NAME.match(n) if n else None for n in names]
    shape = {key: pl.Series(key, [int(m[i + 1]) if m else None for m in parsed], dtype=pl.Int64)
             for i, key in enumerate(SHAPE_KEYS)}
    out = frame.with_columns(**shape)
    if resolution in frame.columns:
        side = pl.when(pl.col("patch") > 0).then(pl.col(resolution).cast(pl.Int64) // pl.col("patch"))
        out = out.with_columns(patches=side * side)
    return out


def scaling_axis(latency: pl.DataFrame) -> str | None:
    """The model-shape key a scaling figure can use: one along which some series (models equal in the other
    shape keys and variant) has at least three points."""
    if "model" not in latency.columns:
        return None
    models = latency.select("model", *(["variant"] if "variant" in latency.columns else [])).unique()
    shapes = model_shape(models).filter(pl.col("depth").is_not_null(), pl.col("patch") > 0)
    for x in ("depth", "dim", "patch"):
        others = [k for k in ("patch", "depth", "dim", "variant") if k != x and k in shapes.columns]
        if not shapes.is_empty() and shapes.group_by(others).agg(pl.col(x).n_unique())[x].max() >= 3:
            return x
    return None


def transfer_share(latency: pl.DataFrame, *, time: str = "gpu_proj_ms", transfer: Sequence[str] = TRANSFER_STAGES,
                   compute: Sequence[str] = COMPUTE_STAGES) -> pl.DataFrame:
    """Per group of the latency summary (its keys: the columns before ``range``): ``transfer_ms`` = the sum of
    ``{time}_mean`` over the ``transfer`` stages (h2d, d2h), ``compute_ms`` = the same over the ``compute``
    stages (forward), and ``transfer_share_pct`` = 100 × transfer_ms / (transfer_ms + compute_ms).

    Reads only ``range`` and ``{time}_mean``; a stage without GPU work (null) counts 0. Means, not
    percentiles, because means add up: per batch, the stages' mean times sum to the mean of their sum."""
    keys = key_columns(latency.columns, "range")
    column = f"{time}_mean"
    require_columns(latency.columns, ["range", column], "transfer_share")
    value = pl.col(column).fill_null(0.0)
    part = latency.group_by(keys, maintain_order=True).agg(
        transfer_ms=value.filter(pl.col("range").is_in(list(transfer))).sum(),
        compute_ms=value.filter(pl.col("range").is_in(list(compute))).sum(),
    ) if keys else latency.select(
        transfer_ms=value.filter(pl.col("range").is_in(list(transfer))).sum(),
        compute_ms=value.filter(pl.col("range").is_in(list(compute))).sum())
    total = pl.col("transfer_ms") + pl.col("compute_ms")
    return part.with_columns(transfer_share_pct=pl.when(total > 0).then(100 * pl.col("transfer_ms") / total))


def busy_breakdown(summary: pl.DataFrame) -> pl.DataFrame:
    """``summary`` (from :func:`nsysan.utilization_summary`) with three shares of the window that add up to
    100 %: ``kernel_pct`` = ``utilization_pct`` (a kernel ran), ``copy_only_pct`` = ``busy_pct`` −
    ``utilization_pct`` (only copies or memsets ran), and ``idle_pct`` as it is. Reads only those columns."""
    require_columns(summary.columns, ["utilization_pct", "busy_pct", "idle_pct"], "busy_breakdown")
    return summary.with_columns(kernel_pct=pl.col("utilization_pct"),
                                copy_only_pct=pl.col("busy_pct") - pl.col("utilization_pct"))


__all__ = ["COMPUTE_STAGES", "SHAPE_KEYS", "TRANSFER_STAGES", "busy_breakdown", "key_columns", "model_shape",
           "require_columns", "scaling_axis", "transfer_share"]
