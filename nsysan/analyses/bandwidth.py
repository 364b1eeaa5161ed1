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

from collections.abc import Sequence

import polars as pl

from nsysan.attribution import kept_ops, op_stages, range_names
from nsysan.defaults import TINY_BYTES, TINY_COUNT_PCT
from nsysan.intervals import union_piece
from nsysan.load import Report, derived
from nsysan.selection import DEFAULT, Selection, pool_names
from nsysan.sql import query

COPY_KEYS = ("direction", "src_kind", "dst_kind")
#: Columns of :func:`copy_trace` besides ``report`` and run metadata that summaries can be grouped by.
ROW_KEYS = ("device_id", "stream_id", "src_device_id", "dst_device_id", "pid")


def copy_trace(report: Report, *, include_memset: bool = True, by_stage: bool = False,
               select: Selection = DEFAULT) -> pl.DataFrame:
    """One row per memory copy (and memset unless ``include_memset`` is False) that ``select`` keeps (those
    launched inside warm-up ranges are left out).

    Columns: ``op`` (memcpy/memset), ``start_ns``, ``end_ns``, ``duration_ns``, ``bytes``, ``direction``,
    ``src_kind``, ``dst_kind`` (labels from the export's ENUM tables), ``device_id``, ``stream_id``,
    ``src_device_id``, ``dst_device_id`` (the GPUs at either end: the export's own for peer-to-peer copies, else
    the copy's device for a device-memory end; null for host memory), ``pid``, ``api`` (name of the CUDA call that launched it; null without a CUDA
    API trace), ``is_async`` (the call is an ``...Async`` variant), ``pageable`` (source or destination is
    pageable host memory), ``global_pid``, ``correlation_id``; with ``by_stage``: ``stage`` (name of the
    innermost NVTX range whose thread launched the copy inside it; null outside any range) and
    ``stage_range_id``.
    """
    has_any = report.has("CUPTI_ACTIVITY_KIND_MEMCPY") or (include_memset and report.has("CUPTI_ACTIVITY_KIND_MEMSET"))
    if not has_any:
        report.require("CUPTI_ACTIVITY_KIND_MEMCPY", purpose="copy bandwidth")
    copies = _kept_copies(report, select=select)
    if not include_memset:
        copies = copies.filter(pl.col("op") == "memcpy")
    if by_stage:
        report.require("NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_RUNTIME", purpose="copy bandwidth by stage")
        names = range_names(report).select(stage_range_id="range_id", stage="name")
        stages = op_stages(report).join(names, on="stage_range_id", how="left")
        copies = copies.join(stages, on=["global_pid", "correlation_id"], how="left")
    return copies.with_columns(pid=(pl.col("global_pid") // (1 << 24)) % (1 << 24)).sort("start_ns", "end_ns")


@derived  # a report's bandwidth, copy sizes, comparisons and NUMA pairs read the same copies
def _kept_copies(report: Report, *, select: Selection = DEFAULT) -> pl.DataFrame:
    """Every copy and memset ``select`` keeps, with the columns :func:`copy_trace` derives (no stage)."""
    return kept_ops(report, report.frame(query("copies")), select).with_columns(
        is_async=pl.col("api").str.contains("(?i)async"),
        pageable=(pl.col("src_kind").str.contains("(?i)pageable").fill_null(False)
                  | pl.col("dst_kind").str.contains("(?i)pageable").fill_null(False)),
    ).drop("global_tid")


def _union_per_group(copies: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Length of the union of copy intervals per ``keys`` group (keys must include ``report`` if present)."""
    frame = copies.sort("start_ns", "end_ns").with_columns(_cover=union_piece("start_ns", "end_ns", over=keys))
    return frame.group_by(keys).agg(pl.col("_cover").sum().cast(pl.Int64).alias("time_union_ns"))


def bandwidth_summary(copies: pl.DataFrame, *, by: Sequence[str] = ("report",), by_stage: bool = False,
                      tiny_bytes: int = TINY_BYTES, select: Selection = DEFAULT) -> pl.DataFrame:
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
        frame = pool_names(frame, select, "stage")
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
    # Integer arithmetic throughout: log2 of a float rounds 2**k - 1 up to 2**k above 2**53, and doubling a
    # guess overflows Int64 from 2**62 on. The bit length of n (64 - leading zeros) is exact up to 2**63 - 1.
    exponent = 63 - nbytes.cast(pl.Int64).bitwise_leading_zeros().cast(pl.Int64)
    return pl.when(nbytes <= 0).then(0).otherwise(pl.lit(2, pl.Int64).pow(exponent)).cast(pl.Int64)


#: The bucket of the largest Int64 sizes, [2**62, 2**63).
_TOP_BUCKET = 1 << 62


def copy_size_histogram(copies: pl.DataFrame, *, by: Sequence[str] = ("report",), by_stage: bool = False,
                        select: Selection = DEFAULT) -> pl.DataFrame:
    """Copy sizes in power-of-two buckets per (``by`` keys, [stage], direction, src_kind, dst_kind).

    A bucket holds the copies with ``size_from_bytes <= bytes < size_to_bytes``, where ``size_from_bytes``
    is a power of two (the bucket for empty copies is [0, 1); the last one, from 2**62, has a null
    ``size_to_bytes``: 2**63 is past Int64). Columns: the keys, ``size_from_bytes``,
    ``size_to_bytes``, ``size_bucket`` (readable label), ``copies``, ``bytes_total``, ``time_total_ns``,
    ``bandwidth_gbps`` (bytes_total / time_total_ns)."""
    frame = pool_names(copies, select, "stage") if by_stage else copies
    group = [*by, *(["stage"] if by_stage else []), *COPY_KEYS]
    frame = frame.with_columns(size_from_bytes=size_bucket(pl.col("bytes")))
    out = frame.group_by([*group, "size_from_bytes"]).agg(
        pl.len().cast(pl.Int64).alias("copies"),
        pl.col("bytes").sum().cast(pl.Int64).alias("bytes_total"),
        pl.col("duration_ns").sum().cast(pl.Int64).alias("time_total_ns"),
    )
    top = pl.col("size_from_bytes") == _TOP_BUCKET
    out = out.with_columns(
        # The last bucket's end, 2**63, is past Int64: null rather than a wrapped negative number.
        size_to_bytes=pl.when(pl.col("size_from_bytes") == 0).then(1).when(~top).then(pl.col("size_from_bytes") * 2),
        bandwidth_gbps=pl.when(pl.col("time_total_ns") > 0).then(pl.col("bytes_total") / pl.col("time_total_ns")),
    )
    out = out.with_columns(size_bucket=pl.format("[{}, {})", _human_bytes(pl.col("size_from_bytes")),
                                                 pl.when(top).then(pl.lit(f"{(1 << 63) >> 30} GiB"))
                                                 .otherwise(_human_bytes(pl.col("size_to_bytes")))))
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

