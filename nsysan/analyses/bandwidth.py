"""Memory-copy bandwidth per direction and memory kinds, as ``nsys stats`` counts copy bytes and time.

Definitions (docs/metrics.md, "Copy bandwidth"):

* groups: (direction, src_kind, dst_kind) as labelled by the export's ENUM tables, within each ``by`` group
  (and NVTX stage with ``by_stage``); memsets form the direction ``Memset`` (nsys's "[CUDA memset]");
* ``time_total_ns`` is the **sum** of copy durations (nsys's "Total Time" of cuda_gpu_mem_time_sum), and
  ``bandwidth_gbps = bytes_total / time_total_ns`` (bytes per ns = GB/s, 1 GB = 1e9 B);
* ``time_union_ns`` / ``bandwidth_union_gbps`` are the union-based variant: the time at least one copy of
  the group was running (per report), so concurrent copies count once;
* per-copy rates ``copy_gbps_*`` are bytes / duration of each copy with a non-zero duration.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from nsysan.attribution import gather, launch_ranges, launches, range_nesting
from nsysan.collection import Collection
from nsysan.load import Report
from nsysan.sql import query

COPY_KEYS = ("direction", "src_kind", "dst_kind")
#: Copies smaller than this are "tiny" (per-copy overhead of a few µs dominates their transfer time).
TINY_BYTES = 64 * 1024
#: A group is flagged when at least this share of its copies (by count) are tiny.
TINY_COUNT_PCT = 50.0
_NUMBERED = re.compile(r"([_\-.:]?)\d+$")


def copy_trace(report: Report, *, include_memset: bool = True, by_stage: bool = False) -> pl.DataFrame:
    """One row per memory copy (and memset unless ``include_memset`` is False).

    Columns: ``op`` (memcpy/memset), ``start_ns``, ``end_ns``, ``duration_ns``, ``bytes``, ``direction``,
    ``src_kind``, ``dst_kind`` (labels from the export's ENUM tables), ``device_id``, ``stream_id``,
    ``api`` (name of the CUDA call that launched it; null without a CUDA API trace), ``is_async`` (the call
    is an ``...Async`` variant), ``pageable`` (source or destination is pageable host memory); with
    ``by_stage``: ``stage`` (name of the innermost NVTX range whose thread launched the copy inside it; null
    outside any range) and ``stage_range_id``.
    """
    has_any = report.has("CUPTI_ACTIVITY_KIND_MEMCPY") or (include_memset and report.has("CUPTI_ACTIVITY_KIND_MEMSET"))
    if not has_any:
        report.require("CUPTI_ACTIVITY_KIND_MEMCPY", purpose="copy bandwidth")
    copies = report.frame(query("copies"))
    if not include_memset:
        copies = copies.filter(pl.col("op") == "memcpy")
    copies = copies.with_columns(
        is_async=pl.col("api").str.contains("(?i)async"),
        pageable=(pl.col("src_kind").str.contains("(?i)pageable").fill_null(False)
                  | pl.col("dst_kind").str.contains("(?i)pageable").fill_null(False)),
    )
    if by_stage:
        report.require("NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_RUNTIME", purpose="copy bandwidth by stage")
        stages = op_stages(report)
        copies = copies.join(stages, on=["global_pid", "correlation_id"], how="left")
    return copies.drop("global_tid").sort("start_ns", "end_ns")


def op_stages(report: Report) -> pl.DataFrame:
    """The innermost NVTX range that launched each GPU op: ``global_pid``, ``correlation_id``,
    ``stage_range_id``, ``stage`` (the range's name). Ops launched outside every range are absent.

    Same rule as the GPU projection of :func:`nsysan.range_trace`: the launching CUDA call lies inside the
    range on the same thread; of those ranges the deepest one is the stage."""
    nesting = range_nesting(report)
    one_row_per_launch = launches(report).unique(["global_tid", "correlation_id"]).with_columns(
        global_pid=pl.col("global_tid") - pl.col("global_tid") % (1 << 24))  # the thread id less its tid bits
    innermost = (gather(one_row_per_launch, launch_ranges(one_row_per_launch, nesting), "global_pid",
                        "correlation_id")
                 .join(nesting.select("range_id", "level", "start_ns"), on="range_id")
                 .sort("level", "start_ns", "range_id", descending=True)
                 .unique(["global_pid", "correlation_id"], keep="first"))
    names = report.frame("SELECT range_id, name AS stage FROM nvtx_ranges")
    return innermost.join(names, on="range_id", how="left").rename({"range_id": "stage_range_id"}).select(
        "global_pid", "correlation_id", "stage", "stage_range_id")


def _union_per_group(copies: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Length of the union of copy intervals per ``keys`` group (keys must include ``report`` if present)."""
    prev = pl.col("end_ns").cum_max().shift(1)
    frame = copies.sort("start_ns", "end_ns").with_columns(_prev=prev.over(keys) if keys else prev)
    covered = (pl.col("end_ns") - pl.max_horizontal("start_ns", pl.col("_prev").fill_null(pl.col("start_ns"))))
    frame = frame.with_columns(_cover=covered.clip(lower_bound=0))
    if not keys:
        return pl.DataFrame({"time_union_ns": [int(frame["_cover"].sum())]})
    return frame.group_by(keys).agg(pl.col("_cover").sum().cast(pl.Int64).alias("time_union_ns"))


def bandwidth_summary(copies: pl.DataFrame, *, by: Sequence[str] = ("report",), by_stage: bool = False,
                      tiny_bytes: int = TINY_BYTES, merge_numbered: bool = False) -> pl.DataFrame:
    """Per (``by`` keys, [stage], direction, src_kind, dst_kind): ``copies``, ``bytes_total``,
    ``time_total_ns`` (sum of durations, as nsys), ``bandwidth_gbps`` (bytes_total / time_total_ns),
    ``time_union_ns`` and ``bandwidth_union_gbps`` (union-based variant), ``copy_gbps_{p50,p95,min,max}``
    (per-copy rates), ``bytes_min``, ``bytes_max``, ``pageable_async_copies``, ``tiny_copies`` (< ``tiny_bytes``),
    ``tiny_copy_pct``, ``tiny_bytes_pct`` and ``flags`` (what looks wrong, in words; null when nothing).

    ``copies`` comes from :func:`copy_trace` (tagged with ``report`` and metadata over a collection).
    Sorted by the ``by`` keys, then bytes, largest first."""
    frame = copies
    if by_stage:
        if "stage" not in frame.columns:
            raise ValueError("by_stage needs copies from copy_trace(report, by_stage=True)")
        if merge_numbered:
            frame = frame.with_columns(pl.col("stage").str.replace(_NUMBERED.pattern, "${1}*"))
    group = [*by, *(["stage"] if by_stage else []), *COPY_KEYS]
    union_keys = list(dict.fromkeys((["report"] if "report" in frame.columns else []) + group))
    unions = _union_per_group(frame, union_keys).group_by(group).agg(pl.col("time_union_ns").sum())

    rate = pl.when(pl.col("duration_ns") > 0).then(pl.col("bytes") / pl.col("duration_ns"))
    tiny = pl.col("bytes") < tiny_bytes
    out = frame.group_by(group).agg(
        pl.len().cast(pl.Int64).alias("copies"),
        pl.col("bytes").sum().cast(pl.Int64).alias("bytes_total"),
        pl.col("duration_ns").sum().cast(pl.Int64).alias("time_total_ns"),
        rate.quantile(0.5, interpolation="linear").alias("copy_gbps_p50"),
        rate.quantile(0.95, interpolation="linear").alias("copy_gbps_p95"),
        rate.min().alias("copy_gbps_min"),
        rate.max().alias("copy_gbps_max"),
        pl.col("bytes").min().alias("bytes_min"),
        pl.col("bytes").max().alias("bytes_max"),
        (pl.col("is_async").fill_null(False) & pl.col("pageable")).sum().cast(pl.Int64).alias("pageable_async_copies"),
        tiny.sum().cast(pl.Int64).alias("tiny_copies"),
        pl.col("bytes").filter(tiny).sum().cast(pl.Int64).alias("_tiny_bytes"),
    )
    out = out.join(unions, on=group, how="left", nulls_equal=True)
    out = out.with_columns(
        bandwidth_gbps=pl.when(pl.col("time_total_ns") > 0).then(pl.col("bytes_total") / pl.col("time_total_ns")),
        bandwidth_union_gbps=pl.when(pl.col("time_union_ns") > 0).then(pl.col("bytes_total") / pl.col("time_union_ns")),
        tiny_copy_pct=100 * pl.col("tiny_copies") / pl.col("copies"),
        tiny_bytes_pct=pl.when(pl.col("bytes_total") > 0).then(100 * pl.col("_tiny_bytes") / pl.col("bytes_total"))
        .otherwise(0.0),
    )
    pageable_flag = pl.when(pl.col("pageable_async_copies") > 0).then(pl.format(
        "pageable memory in {} async copies (staged, not async): pin the host buffer",
        pl.col("pageable_async_copies")))
    tiny_flag = pl.when(pl.col("tiny_copy_pct") >= TINY_COUNT_PCT).then(pl.format(
        "tiny copies: {}% of copies < {} B carry {}% of bytes: batch them",
        pl.col("tiny_copy_pct").round(0).cast(pl.Int64), pl.lit(tiny_bytes), pl.col("tiny_bytes_pct").round(1)))
    out = out.with_columns(flags=pl.concat_str([pageable_flag, tiny_flag], separator="; ", ignore_nulls=True))
    # Flags are about copies; a memset has no host side and tiny memsets (counters, flags) are normal.
    out = out.with_columns(flags=pl.when((pl.col("flags") != "") & (pl.col("direction") != "Memset"))
                           .then(pl.col("flags")))
    columns = [*group, "copies", "bytes_total", "time_total_ns", "bandwidth_gbps", "time_union_ns",
               "bandwidth_union_gbps", "copy_gbps_p50", "copy_gbps_p95", "copy_gbps_min", "copy_gbps_max",
               "bytes_min", "bytes_max", "pageable_async_copies", "tiny_copies", "tiny_copy_pct", "tiny_bytes_pct",
               "flags"]
    sort = [*by, *(["stage"] if by_stage else [])]
    return out.select(columns).sort([*sort, "bytes_total", *COPY_KEYS],
                                    descending=[False] * len(sort) + [True, False, False, False], nulls_last=True)


def size_bucket(nbytes: pl.Expr) -> pl.Expr:
    """Lower bound of the power-of-two bucket holding ``nbytes``: the largest 2**k <= nbytes (0 for 0 B)."""
    k = nbytes.cast(pl.Float64).log(2).floor()
    # Guard against floating-point error at exact powers of two.
    lower = (pl.lit(2.0) ** k).cast(pl.Int64)
    lower = pl.when(lower * 2 <= nbytes).then(lower * 2).when(lower > nbytes).then(lower // 2).otherwise(lower)
    return pl.when(nbytes <= 0).then(0).otherwise(lower).cast(pl.Int64)


def copy_size_histogram(copies: pl.DataFrame, *, by: Sequence[str] = ("report",), by_stage: bool = False,
                        merge_numbered: bool = False) -> pl.DataFrame:
    """Copy sizes in power-of-two buckets per (``by`` keys, [stage], direction, src_kind, dst_kind).

    A bucket holds the copies with ``size_from_bytes <= bytes < size_to_bytes``, where ``size_from_bytes``
    is a power of two (the bucket for empty copies is [0, 1)). Columns: the keys, ``size_from_bytes``,
    ``size_to_bytes``, ``size_bucket`` (readable label), ``copies``, ``bytes_total``, ``time_total_ns``,
    ``bandwidth_gbps`` (bytes_total / time_total_ns)."""
    frame = copies
    if by_stage and merge_numbered:
        frame = frame.with_columns(pl.col("stage").str.replace(_NUMBERED.pattern, "${1}*"))
    group = [*by, *(["stage"] if by_stage else []), *COPY_KEYS]
    frame = frame.with_columns(size_from_bytes=size_bucket(pl.col("bytes")))
    out = frame.group_by([*group, "size_from_bytes"]).agg(
        pl.len().cast(pl.Int64).alias("copies"),
        pl.col("bytes").sum().cast(pl.Int64).alias("bytes_total"),
        pl.col("duration_ns").sum().cast(pl.Int64).alias("time_total_ns"),
    )
    out = out.with_columns(
        size_to_bytes=pl.when(pl.col("size_from_bytes") == 0).then(1).otherwise(pl.col("size_from_bytes") * 2),
        bandwidth_gbps=pl.when(pl.col("time_total_ns") > 0).then(pl.col("bytes_total") / pl.col("time_total_ns")),
    )
    out = out.with_columns(size_bucket=pl.format("[{}, {})", _human_bytes(pl.col("size_from_bytes")),
                                                 _human_bytes(pl.col("size_to_bytes"))))
    return out.select(*group, "size_from_bytes", "size_to_bytes", "size_bucket", "copies", "bytes_total",
                      "time_total_ns", "bandwidth_gbps").sort([*group, "size_from_bytes"], nulls_last=True)


def _human_bytes(nbytes: pl.Expr) -> pl.Expr:
    """Exact binary-prefixed label of a power of two: 0 B, 512 B, 4 KiB, 16 MiB, 2 GiB."""
    expr = pl.format("{} B", nbytes)
    for power, unit in ((10, "KiB"), (20, "MiB"), (30, "GiB")):
        scale = 1 << power
        expr = pl.when((nbytes >= scale) & (nbytes % scale == 0)).then(
            pl.format("{} " + unit, nbytes // scale)).otherwise(expr)
    return expr



def bandwidth(runs: Collection, *, by: Sequence[str] = ("report",), by_stage: bool = False,
              include_memset: bool = True, tiny_bytes: int = TINY_BYTES, merge_numbered: bool = False,
              histogram: bool = False, progress: Callable[[Path], None] | None = None) -> pl.DataFrame:
    """Copy bandwidth of every report of ``runs``, grouped by ``by`` (``report`` or metadata keys): the
    :func:`bandwidth_summary`, or with ``histogram`` the :func:`copy_size_histogram`."""
    copies = runs.concat(lambda report: copy_trace(report, include_memset=include_memset, by_stage=by_stage),
                         progress)
    if copies.is_empty():
        return copies
    runs.check_keys(by)
    if histogram:
        return copy_size_histogram(copies, by=by, by_stage=by_stage, merge_numbered=merge_numbered)
    return bandwidth_summary(copies, by=by, by_stage=by_stage, tiny_bytes=tiny_bytes, merge_numbered=merge_numbered)
