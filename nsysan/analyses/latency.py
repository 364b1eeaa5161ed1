"""Per-stage latency from NVTX ranges: CPU time of each range and the GPU work it launched.

Definitions follow ``nsys stats -r nvtx_gpu_proj_sum`` (see docs/metrics.md):

* a GPU op (kernel, memcpy, memset) belongs to a range when the CUDA API call that launched it lies inside
  the range on the same thread; it counts for every enclosing range;
* projected time of an instance = end of its last op - start of its first op; GPU ops = distinct
  correlation ids;
* ranges that end on another thread than they started get CPU time only.

Beyond nsys: ``gpu_busy_ns`` (union of the instance's op intervals), ``level`` and ``parent``.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import polars as pl

from nsysan.attribution import gather, launch_pairs, launches, nvtx_ranges, range_nesting
from nsysan.errors import MissingDataError, NsysanWarning
from nsysan.intervals import union_pieces
from nsysan.lazy import numpy as np
from nsysan.load import Report, derived
from nsysan.schema import CAPTURE_HINTS
from nsysan.selection import DEFAULT, Selection, pool_names, select_instances
from nsysan.stats import describe_ms

TRACE_COLUMNS = ("range", "style", "level", "parent", "start_ns", "range_ns", "gpu_proj_start_ns", "gpu_proj_ns",
                 "gpu_busy_ns", "gpu_ops", "pid", "tid", "range_id", "parent_id")
#: Columns of the trace besides ``report`` and run metadata that summaries can be grouped by.
ROW_KEYS = ("pid", "tid")


def instances(report: Report, *, select: Selection = DEFAULT, attribution: str = "thread") -> pl.DataFrame:
    """The range instances of ``report`` that ``select`` keeps: :func:`range_trace` rows, names as recorded.
    Under nsys's thread rule, a warning names the ranges whose GPU work other threads launched."""
    trace = range_trace(report, attribution=attribution)
    if attribution == "thread":
        foreign_launches(report)
    return select_instances(trace, select)


@derived
def range_trace(report: Report, attribution: str = "thread") -> pl.DataFrame:
    """One row per NVTX range instance with its GPU projection.

    ``attribution`` picks which GPU ops count for a range (:data:`nsysan.attribution.RULES`): ``thread``
    (nsys's rule, the default) or ``process`` (ops launched by any thread of its process while it was open).

    Columns: ``range`` (name), ``style`` (PushPop/StartEnd), ``level`` (0 = outermost), ``parent`` (name of
    the enclosing range), ``start_ns``, ``range_ns`` (CPU duration), ``gpu_proj_start_ns``, ``gpu_proj_ns``
    (last op end - first op start; null without GPU ops), ``gpu_busy_ns`` (union of op intervals),
    ``gpu_ops`` (distinct launches, 0 without), ``pid``, ``tid``, ``range_id``, ``parent_id``.
    Times are integer nanoseconds on the capture's clock.
    """
    report.require("NVTX_EVENTS", purpose="stage latency")
    ranges = nvtx_ranges(report)
    if ranges.is_empty():
        raise MissingDataError(f"{report.path}: {CAPTURE_HINTS['NVTX_EVENTS']} (the NVTX table holds no ranges;"
                               " needed for stage latency)")
    nesting = range_nesting(report)
    trace = ranges.join(nesting.select("range_id", "parent_id", "level"), on="range_id", how="left")
    trace = trace.with_columns(pl.col("level").fill_null(0))
    if _has_gpu_trace(report):
        trace = trace.join(_project(report, attribution), on="range_id", how="left")
    else:
        trace = trace.with_columns(gpu_proj_start_ns=pl.lit(None, pl.Int64), gpu_proj_ns=pl.lit(None, pl.Int64),
                                   gpu_busy_ns=pl.lit(None, pl.Int64), gpu_ops=pl.lit(None, pl.Int64))
    names = ranges.select(parent_id="range_id", parent="name")
    trace = trace.join(names, on="parent_id", how="left")
    return trace.select(
        pl.col("name").alias("range"), "style", "level", "parent", "start_ns",
        (pl.col("end_ns") - pl.col("start_ns")).alias("range_ns"),
        "gpu_proj_start_ns", "gpu_proj_ns", pl.col("gpu_busy_ns").fill_null(0),
        pl.col("gpu_ops").fill_null(0).cast(pl.Int64), "pid", "tid", "range_id", "parent_id",
    ).sort("start_ns", "range_id")


def _has_gpu_trace(report: Report) -> bool:
    return report.has("CUPTI_ACTIVITY_KIND_RUNTIME") and any(
        report.has(t) for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"))


def _project(report: Report, attribution: str) -> pl.DataFrame:
    """Projection of each range that launched GPU work: first op start, last op end - first op start,
    union of op intervals (busy), and distinct launches."""
    pairs = (gather(launches(report), launch_pairs(report, rule=attribution), "correlation_id", "op_start", "op_end")
             .sort("range_id", "op_start", "op_end"))
    pieces = union_pieces(*(pairs[c].to_numpy() for c in ("range_id", "op_start", "op_end")))
    return (pairs.with_columns(_piece=pl.Series(pieces, dtype=pl.Int64))
            .group_by("range_id")
            .agg(gpu_proj_start_ns=pl.col("op_start").min(),
                 gpu_proj_ns=pl.col("op_end").max() - pl.col("op_start").min(),
                 gpu_busy_ns=pl.col("_piece").sum(),
                 gpu_ops=pl.col("correlation_id").n_unique().cast(pl.Int64)))


def latency_summary(trace: pl.DataFrame, *, by: Sequence[str] = ("report",), select: Selection = DEFAULT
                    ) -> pl.DataFrame:
    """Statistics per range name (and style) within each group of ``by`` columns, pooled over instances
    (numbered names pooled as ``batch_*`` when ``select.merge_numbered``).

    Columns: the ``by`` keys, ``range``, ``style``, ``instances``, ``range_total_ns``, ``gpu_instances``
    (instances that launched GPU work; nsys's "Range Instances"), ``gpu_proj_total_ns``, ``gpu_ops_total``,
    ``gpu_busy_total_ns`` and ``range_ms_*`` / ``gpu_proj_ms_*`` / ``gpu_busy_ms_*`` statistics
    (mean, p50, p95, p99, min, max, std). GPU statistics are over instances with GPU ops only.
    """
    keys = [*by, "range", "style"]
    has_gpu = pl.col("gpu_ops") > 0
    origin = pl.col("start_ns").min()
    frame = pool_names(trace, select).with_columns(_origin=origin.over(by) if by else origin)
    summary = frame.group_by(keys).agg(
        pl.len().alias("instances"),
        pl.col("range_ns").sum().alias("range_total_ns"),
        has_gpu.sum().cast(pl.Int64).alias("gpu_instances"),
        pl.col("gpu_proj_ns").filter(has_gpu).sum().alias("gpu_proj_total_ns"),
        pl.col("gpu_ops").sum().alias("gpu_ops_total"),
        pl.col("gpu_busy_ns").filter(has_gpu).sum().alias("gpu_busy_total_ns"),
        *describe_ms(pl.col("range_ns"), "range_ms"),
        *describe_ms(pl.col("gpu_proj_ns").filter(has_gpu), "gpu_proj_ms"),
        *describe_ms(pl.col("gpu_busy_ns").filter(has_gpu), "gpu_busy_ms"),
        (pl.col("start_ns") - pl.col("_origin")).min().alias("_first_offset"),
        pl.col("level").min().alias("_level"),
    )
    return summary.sort([*by, "_first_offset", "_level", "range"]).drop("_first_offset", "_level")


#: Under nsys's rule, a range whose projected GPU time is below this share of its CPU time while other threads
#: of its process launched GPU work during it is worth a warning: its GPU work was probably launched elsewhere.
FOREIGN_SHARE = 0.01


@derived
def foreign_launches(report: Report) -> list[str]:
    """Warnings (sent once per open report) naming the ranges whose GPU time under nsys's thread rule is under 1 %
    of their CPU time while other threads of their process launched GPU work during them."""
    if not _has_gpu_trace(report):
        return []
    trace = range_trace(report)
    suspects = trace.filter((pl.col("range_ns") > 0)
                            & (pl.col("gpu_proj_ns").fill_null(0) < FOREIGN_SHARE * pl.col("range_ns")))
    if suspects.is_empty():
        return []
    calls = launches(report).select(pid=(pl.col("global_tid") // (1 << 24)) % (1 << 24),
                                    tid=pl.col("global_tid") % (1 << 24), call_start="call_start")
    by_process = {pid: np.sort(g["call_start"].to_numpy()) for (pid,), g in calls.group_by("pid")}
    by_thread = {key: np.sort(g["call_start"].to_numpy()) for key, g in calls.group_by("pid", "tid")}
    empty = np.zeros(0, dtype=np.int64)

    def launched_in(starts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.searchsorted(starts, hi, side="right") - np.searchsorted(starts, lo, side="left")

    counted = []
    for (pid, tid), rows in suspects.group_by("pid", "tid"):
        lo = rows["start_ns"].to_numpy()
        hi = lo + rows["range_ns"].to_numpy()
        others = (launched_in(by_process.get(pid, empty), lo, hi)
                  - launched_in(by_thread.get((pid, tid), empty), lo, hi))
        counted.append(rows.select("range").with_columns(others=pl.Series(others, dtype=pl.Int64)))
    flagged = (pl.concat(counted).filter(pl.col("others") > 0).group_by("range")
               .agg(pl.len().alias("n"), pl.col("others").sum()).sort("others", descending=True))
    totals = dict(trace.group_by("range").len().iter_rows())
    messages = [f"{name}: under nsys's same-thread rule its GPU time is under 1 % of its CPU time in {n} of "
                f"{totals[name]} instance(s), yet other threads of its process launched {others} GPU op(s) "
                "during them (an autograd or prefetch thread?): attribution='process' (--attribution process) "
                "counts them" for name, n, others in flagged.iter_rows()]
    for text in messages:
        warnings.warn(NsysanWarning(f"{report.path}: {text}"), stacklevel=2)
    return messages
