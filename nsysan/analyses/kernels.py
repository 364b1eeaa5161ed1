"""Kernel summary: time per CUDA kernel name, as ``nsys stats -r cuda_gpu_kern_sum`` defines it."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import polars as pl

from nsysan.attribution import kept_ops
from nsysan.load import Report
from nsysan.selection import DEFAULT, Selection
from nsysan.stats import describe_ms

KernelNames = Literal["demangled", "short", "mangled"]
KERNEL_NAMES: tuple[str, ...] = ("demangled", "short", "mangled")
NAME_COLUMN = {"demangled": "name", "short": "short_name", "mangled": "mangled_name"}
#: Columns of :func:`kernel_durations` besides ``report`` and run metadata that summaries can be grouped by.
ROW_KEYS = ("device_id", "stream_id", "pid")


def kernel_durations(report: Report, *, names: KernelNames = "demangled", select: Selection = DEFAULT) -> pl.DataFrame:
    """One row per kernel execution that ``select`` keeps (kernels launched inside warm-up ranges are left
    out): ``name`` (as chosen by ``names``), ``start_ns``, ``duration_ns``, ``device_id``, ``stream_id``,
    ``pid`` (the launching process)."""
    report.require("CUPTI_ACTIVITY_KIND_KERNEL", purpose="the kernel summary")
    kernels = report.frame(f"SELECT {NAME_COLUMN[names]} AS name, start_ns, duration_ns, device_id, stream_id, "
                           "global_pid, correlation_id FROM kernels")
    return kept_ops(report, kernels, select).select(
        "name", "start_ns", "duration_ns", "device_id", "stream_id",
        pid=(pl.col("global_pid") // (1 << 24)) % (1 << 24))


def kernel_summary(durations: pl.DataFrame, *, by: Sequence[str] = ("report",)) -> pl.DataFrame:
    """Per kernel name within each ``by`` group: ``instances``, ``total_ns``, ``time_pct`` (share of the
    group's kernel time, summed durations as nsys does) and ``gpu_ms_{mean,p50,p95,p99,min,max,std}``.
    Sorted by total time, largest first."""
    by = list(by)
    keys = [*by, "name"]
    out = durations.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("instances"),
        pl.col("duration_ns").sum().alias("total_ns"),
        *describe_ms(pl.col("duration_ns"), "gpu_ms"),
    )
    share = pl.col("total_ns") / pl.col("total_ns").sum()
    out = out.with_columns((100 * (share.over(by) if by else share)).alias("time_pct"))
    order = [*by, "total_ns", "instances", "name"]
    return out.select(*keys, "instances", "total_ns", "time_pct",
                      *[c for c in out.columns if c.startswith("gpu_ms_")]).sort(
        order, descending=[False] * len(by) + [True, False, False])
