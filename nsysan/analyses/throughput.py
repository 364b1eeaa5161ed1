"""Throughput from the per-batch NVTX ranges of a run: samples/s and batch latency, measured batches only.

Definitions (docs/metrics.md, "Throughput"):

* **measured batches**: rule 4 of :mod:`nsysan.selection`: the outermost instances named like the selection's
  ``batches`` glob (default ``batch_*``) that are neither named like nor nested inside warm-up ranges
  (default ``warmup_*``);
* **window** of a run: first measured batch's start to the last one's end (CPU clock, gaps between batches
  included);
* **batch size** from run metadata: sidecar key ``batch_size``, else sidecar key ``batch``, else a
  ``bs<N>``/``batch<N>`` token in the report name; never guessed (null, and said so in ``note``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from nsysan.analyses.latency import range_trace
from nsysan.errors import MissingDataError
from nsysan.load import Report
from nsysan.selection import DEFAULT, Selection, measured_batches
from nsysan.stats import describe_ms

#: Metadata keys holding the batch size, in order of preference.
BATCH_SIZE_KEYS = ("batch_size", "batch")
#: Columns of :func:`batch_trace` besides ``report`` and run metadata that summaries can be grouped by.
ROW_KEYS = ("pid",)
_NAME_BATCH = re.compile(r"(?:^|[_\-.])(?:bs|batch)(\d+)(?=$|[_\-.])", re.IGNORECASE)
NS_PER_S = 1e9


def batch_trace(report: Report, *, select: Selection = DEFAULT) -> pl.DataFrame:
    """One row per measured batch of ``report`` (rule 4 of :mod:`nsysan.selection`): ``range``, ``start_ns``,
    ``end_ns``, ``batch_ns`` (CPU duration of the range), ``gpu_end_ns`` (end of the last GPU op it launched;
    null without), ``pid``, ``range_id``. Raises :class:`MissingDataError` when no range matches."""
    batches = measured_batches(range_trace(report), select)
    if batches.is_empty():
        outside = f" outside {', '.join(select.exclude_within)}" if select.exclude_within else ""
        raise MissingDataError(f"{report.path}: no measured batches: no NVTX range matches {' or '.join(select.batches)}"
                               f"{outside}")
    return batches.select(
        "range", "start_ns", (pl.col("start_ns") + pl.col("range_ns")).alias("end_ns"),
        pl.col("range_ns").alias("batch_ns"),
        (pl.col("gpu_proj_start_ns") + pl.col("gpu_proj_ns")).alias("gpu_end_ns"), "pid", "range_id")


def batch_size_of(meta: dict[str, object], report: str | None = None) -> tuple[int | None, str | None]:
    """The batch size of a run and where it came from (``sidecar:<key>`` or ``name``); (None, None) when
    neither the metadata nor the report name states it."""
    for key in BATCH_SIZE_KEYS:
        value = meta.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            if value > 0:
                return int(value), f"sidecar:{key}"
        if isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value), f"sidecar:{key}"
    if report:
        found = _NAME_BATCH.search(report)
        if found and int(found[1]) > 0:
            return int(found[1]), "name"
    return None, None


def _with_batch_size(batches: pl.DataFrame, batch_size: int | None) -> pl.DataFrame:
    """Add ``batch_size`` / ``batch_size_source`` to every row: ``batch_size`` if given, else each run's
    metadata columns (``batch_size``, ``batch``) or report name (see :func:`batch_size_of`)."""
    if batch_size is not None:
        return batches.with_columns(batch_size=pl.lit(batch_size, pl.Int64), batch_size_source=pl.lit("argument"))
    meta_cols = [k for k in BATCH_SIZE_KEYS if k in batches.columns]
    frame = batches.drop("batch_size", "batch_size_source", strict=False)
    if "report" not in batches.columns:
        meta = batches.select(meta_cols).row(0, named=True) if meta_cols and batches.height else {}
        size, source = batch_size_of(meta)
        return frame.with_columns(batch_size=pl.lit(size, pl.Int64), batch_size_source=pl.lit(source, pl.String))
    runs = batches.select("report", *meta_cols).unique(subset="report", keep="first", maintain_order=True)
    found = [batch_size_of(row, row["report"]) for row in runs.iter_rows(named=True)]
    sizes = runs.select("report").with_columns(
        batch_size=pl.Series([f[0] for f in found], dtype=pl.Int64),
        batch_size_source=pl.Series([f[1] for f in found], dtype=pl.String))
    return frame.join(sizes, on="report", how="left")


def throughput_summary(batches: pl.DataFrame, *, by: Sequence[str] = ("report",),
                       batch_size: int | None = None) -> pl.DataFrame:
    """Samples/s and batch latency per ``by`` group, from :func:`batch_trace` rows (tagged with ``report``
    and metadata over a collection; without a ``report`` column all rows are one run).

    The ranks (processes, ``pid``) of a run step together: a run's window spans all its ranks (one clock), its
    batches are the steps of one rank (the most of any rank), and its samples are summed over ranks.

    Columns: the ``by`` keys, ``runs``, ``ranks`` (processes with batches, summed over runs), ``batches``
    (steps, summed over runs), ``batch_size`` (per rank; null when unknown or mixed within the group),
    ``batch_size_source``, ``samples`` (batch size x batches, summed over ranks and runs; null when any run's
    batch size is unknown), ``window_ns`` (sum over runs of last batch end - first batch start),
    ``batches_per_s`` (steps / window), ``samples_per_s`` (samples / window),
    ``batch_ms_{mean,p50,p95,p99,min,max,std}`` (CPU duration of the batch ranges, pooled over ranks and runs)
    and ``note`` (why a value is missing)."""
    frame = _with_batch_size(batches, batch_size)
    group = list(by) or ["_all"]
    if not by:
        frame = frame.with_columns(_all=pl.lit(0))
    if "pid" not in frame.columns:
        frame = frame.with_columns(pid=pl.lit(0, pl.Int64))
    run = list(dict.fromkeys([*group, *(["report"] if "report" in frame.columns else [])]))
    # Per rank of a run: its steps and samples.
    streams = frame.group_by([*run, "pid"]).agg(
        pl.len().alias("_steps"), pl.col("batch_size").first().alias("_size"),
        pl.col("batch_size_source").first().alias("_source"))
    # Per run: one window across its ranks (runs are on different clocks, so windows are summed, never spanned).
    spans = frame.group_by(run).agg((pl.col("end_ns").max() - pl.col("start_ns").min()).alias("window_ns"))
    runs = streams.group_by(run).agg(
        pl.len().alias("_ranks"), pl.col("_steps").max().alias("_steps"),
        (pl.col("_size") * pl.col("_steps")).sum().alias("_samples"),
        pl.col("_size").null_count().alias("_unknown_ranks"),
    ).join(spans, on=run, nulls_equal=True)
    per_group = runs.group_by(group).agg(
        pl.len().cast(pl.Int64).alias("runs"),
        pl.col("_ranks").sum().cast(pl.Int64).alias("ranks"),
        pl.col("_steps").sum().cast(pl.Int64).alias("batches"),
        pl.col("window_ns").sum().cast(pl.Int64),
        pl.col("_samples").sum().cast(pl.Int64).alias("_samples"),
        (pl.col("_unknown_ranks") > 0).sum().alias("_unknown"),
    )
    sizes = streams.group_by(group).agg(
        pl.col("_size").drop_nulls().unique().alias("_sizes"),
        pl.col("_source").drop_nulls().unique().sort().str.join(",").alias("batch_size_source"))
    stats = frame.group_by(group).agg(*describe_ms(pl.col("batch_ns"), "batch_ms"))
    out = (per_group.join(sizes, on=group, how="left", nulls_equal=True)
           .join(stats, on=group, how="left", nulls_equal=True))
    known = pl.col("_unknown") == 0
    seconds = pl.col("window_ns") / NS_PER_S
    out = out.with_columns(
        batch_size=pl.when(pl.col("_sizes").list.len() == 1).then(pl.col("_sizes").list.first()),
        samples=pl.when(known).then(pl.col("_samples")),
        batches_per_s=pl.when(pl.col("window_ns") > 0).then(pl.col("batches") / seconds),
        samples_per_s=pl.when(known & (pl.col("window_ns") > 0)).then(pl.col("_samples") / seconds),
        note=pl.when(~known).then(pl.format(
            "batch size unknown for {} of {} run(s): add \"batch_size\" to <report>.meta.json",
            pl.col("_unknown"), pl.col("runs"))),
        batch_size_source=pl.when(pl.col("batch_size_source") != "").then(pl.col("batch_size_source")),
    )
    return out.select(*by, "runs", "ranks", "batches", "batch_size", "batch_size_source", "samples", "window_ns",
                      "batches_per_s", "samples_per_s", *[c for c in out.columns if c.startswith("batch_ms_")],
                      "note").sort(group if by else [])
