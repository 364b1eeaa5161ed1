"""GPU utilization over a window: busy time as a union of op intervals, idle gaps, and the top kernels.

Definitions (docs/metrics.md, "GPU utilization"):

* **window**: ``capture`` (first to last traced event: NVTX range, CUDA API call or GPU op; the selection does
  not apply), ``batches`` (first measured batch's start to the end of the last one, or of the GPU work it launched if later), or a
  range-name glob such as ``forward``: the union of its instances that the selection keeps, each from its
  start to the end of the range or of the GPU work it launched, whichever is later;
* **busy** times are lengths of unions of op intervals clipped to the window: overlapping ops count once,
  so busy ≤ window always (nsys's summed "Total Time" can exceed wall time);
* ``utilization_pct`` = kernel busy / window; idle = window - busy (kernels, copies or memsets);
* **idle gaps**: the stretches between consecutive busy intervals inside one window interval (time before
  the first op and after the last op of a window interval is idle but not a gap).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

import polars as pl

from nsysan import intervals
from nsysan.analyses.kernels import NAME_COLUMN, KernelNames
from nsysan.analyses.latency import range_trace
from nsysan.defaults import LAUNCH_BOUND_GAP_PCT, LAUNCH_BOUND_IDLE_PCT, LAUNCH_GAP_NS, SHORT_GAP_NS
from nsysan.errors import MissingDataError
from nsysan.lazy import numpy as np
from nsysan.load import Report, derived
from nsysan.selection import DEFAULT, Selection, measured_batches, select_instances

#: Columns of :func:`gpu_utilization` besides ``report`` and run metadata that summaries can be grouped by.
ROW_KEYS = ("device_id", "stream_id", "pid")
_SUM_COLUMNS = ("window_ns", "kernel_busy_ns", "copy_busy_ns", "overlap_ns", "busy_ns", "idle_ns", "kernel_sum_ns",
                "kernels", "copies")


# -- windows -----------------------------------------------------------------------------------------------------
def window_intervals(report: Report, *, window: str = "capture", select: Selection = DEFAULT
                     ) -> dict[int | None, tuple[intervals.Spans, int]]:
    """The window as a span set and the number of instances that made it, per process (``pid``): each
    process's own instances make its window. The ``capture`` window is one for all processes (key None)."""
    if window == "capture":
        lo, hi = report.sql(
            "SELECT min(lo), max(hi) FROM ("
            " SELECT min(start_ns) AS lo, max(end_ns) AS hi FROM nvtx_ranges UNION ALL"
            " SELECT min(start_ns), max(end_ns) FROM runtime UNION ALL"
            " SELECT min(start_ns), max(end_ns) FROM gpu_ops)").fetchone()
        if lo is None:
            raise MissingDataError(f"{report.path}: no NVTX ranges, CUDA calls or GPU ops: the capture is empty")
        return {None: ((np.array([lo], dtype=np.int64), np.array([hi], dtype=np.int64)), 1)}
    report.require("NVTX_EVENTS", purpose=f"the {window!r} window")
    trace = range_trace(report)
    in_flight = pl.max_horizontal(pl.col("start_ns") + pl.col("range_ns"),
                                  (pl.col("gpu_proj_start_ns") + pl.col("gpu_proj_ns")).fill_null(0))
    outside = f" outside {', '.join(select.exclude_within)}" if select.exclude_within else ""
    if window == "batches":
        chosen = measured_batches(trace, select)
        if chosen.is_empty():
            raise MissingDataError(f"{report.path}: no measured batches: no NVTX range matches "
                                   f"{' or '.join(select.batches)}{outside}")
        spans = chosen.group_by("pid").agg(pl.col("start_ns").min(), in_flight.max().alias("end_ns"), pl.len())
        return {pid: ((np.array([lo], dtype=np.int64), np.array([hi], dtype=np.int64)), n)
                for pid, lo, hi, n in spans.iter_rows()}
    kept = select_instances(trace, select)
    names = [n for n in kept["range"].unique().drop_nulls().to_list() if fnmatch.fnmatchcase(n, window)]
    chosen = kept.filter(pl.col("range").is_in(names))
    if chosen.is_empty():
        raise MissingDataError(f"{report.path}: no instances of NVTX range {window!r}{outside}")
    return {pid: (intervals.merge(rows["start_ns"].to_numpy(), rows.select(end=in_flight)["end"].to_numpy()),
                  rows.height)
            for (pid,), rows in chosen.group_by("pid", maintain_order=True)}


# -- per report ----------------------------------------------------------------------------------------------------
def gpu_utilization(report: Report, *, window: str = "capture", by_stream: bool = False,
                    select: Selection = DEFAULT, names: KernelNames = "short") -> pl.DataFrame:
    """Per GPU (and stream with ``by_stream``) of ``report``: the window and the busy/idle parts of it.

    For a range or ``batches`` window, each process (``pid``) is measured on its own: its window is made of its
    own instances and only the GPU ops it launched count, per device it used. The ``capture`` window is one
    for every process (``pid`` null), and every op on a device counts.

    One row per ``device_id`` (GPUs of the capture without ops included) [and ``stream_id``] [and ``pid``]:
    ``window`` (its name), ``window_instances``, ``window_ns``, ``kernel_busy_ns`` (union of kernel intervals
    inside the window), ``copy_busy_ns`` (union of memcpy and memset intervals), ``overlap_ns`` (time both ran),
    ``busy_ns`` (union of all ops), ``idle_ns`` (window - busy), ``kernel_sum_ns`` (summed kernel durations
    inside the window; nsys's way, can exceed the window), ``kernels``, ``copies`` (ops overlapping the
    window), ``gaps_ns`` (list of idle gaps) and ``kernel_times`` (list of {name, instances, time_ns}).
    Summarise with :func:`utilization_summary` / :func:`top_kernels`."""
    has_ops = any(report.has(t) for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
                                          "CUPTI_ACTIVITY_KIND_MEMSET"))
    if not has_ops:
        report.require("CUPTI_ACTIVITY_KIND_KERNEL", purpose="GPU utilization")
    windows = window_intervals(report, window=window, select=select)
    ops, kernels = _gpu_ops(report), _kernels(report, names=names)
    keys = ["device_id", "stream_id"] if by_stream else ["device_id"]
    rows = []
    for process, (win, instances) in windows.items():
        own = ops if process is None else ops.filter(pl.col("pid") == process)
        units = own.select(keys).unique().cast({"device_id": pl.Int64})
        if not by_stream and process is None:
            gpus = report.frame("SELECT device_id FROM gpus").cast({"device_id": pl.Int64})
            units = pl.concat([units, gpus]).unique()
        for unit in units.sort(keys).iter_rows(named=True):
            match = pl.all_horizontal(*[pl.col(k) == v for k, v in unit.items()],
                                      *([] if process is None else [pl.col("pid") == process]))
            rows.append({**unit, "pid": process, "window": window, "window_instances": instances,
                         **_busy(ops.filter(match), kernels.filter(match), win)})
    schema = {**{k: pl.Int64 for k in keys}, "pid": pl.Int64, "window": pl.String, "window_instances": pl.Int64,
              **{c: pl.Int64 for c in _SUM_COLUMNS}, "gaps_ns": pl.List(pl.Int64),
              "kernel_times": pl.List(pl.Struct({"name": pl.String, "instances": pl.Int64, "time_ns": pl.Int64}))}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


_PID = pl.col("global_pid").floordiv(1 << 24).mod(1 << 24).cast(pl.Int64).alias("pid")


@derived  # read once for every window of a report
def _gpu_ops(report: Report) -> pl.DataFrame:
    return report.frame("SELECT kind, start_ns, end_ns, device_id, stream_id, global_pid FROM gpu_ops").with_columns(
        _PID)


@derived
def _kernels(report: Report, *, names: KernelNames = "short") -> pl.DataFrame:
    return report.frame(f"SELECT {NAME_COLUMN[names]} AS name, start_ns, end_ns, device_id, stream_id, global_pid "
                        "FROM kernels").with_columns(_PID)


def _busy(unit_ops: pl.DataFrame, unit_kernels: pl.DataFrame, win: intervals.Spans) -> dict[str, object]:
    """The window's busy/idle parts for one unit's ops (columns of :func:`gpu_utilization` after ``window``)."""
    window_ns = intervals.length(win)
    is_kernel = (unit_ops["kind"] == "kernel").to_numpy()
    starts, ends = unit_ops["start_ns"].to_numpy(), unit_ops["end_ns"].to_numpy()
    inside = intervals.clipped_lengths(starts, ends, win)
    touching = intervals.overlaps(starts, ends, win)
    k = intervals.intersect(intervals.merge(starts[is_kernel], ends[is_kernel]), win)
    c = intervals.intersect(intervals.merge(starts[~is_kernel], ends[~is_kernel]), win)
    busy = intervals.intersect(intervals.merge(starts, ends), win)
    kernel_busy, copy_busy, busy_ns = intervals.length(k), intervals.length(c), intervals.length(busy)
    k_starts, k_ends = unit_kernels["start_ns"].to_numpy(), unit_kernels["end_ns"].to_numpy()
    times = (unit_kernels.with_columns(time_ns=pl.Series(intervals.clipped_lengths(k_starts, k_ends, win),
                                                         dtype=pl.Int64),
                                       _in=pl.Series(intervals.overlaps(k_starts, k_ends, win)))
             .filter(pl.col("_in")).group_by("name")
             .agg(pl.len().cast(pl.Int64).alias("instances"), pl.col("time_ns").sum().cast(pl.Int64))
             .sort("time_ns", "name", descending=[True, False]))
    return {"window_ns": window_ns, "kernel_busy_ns": kernel_busy, "copy_busy_ns": copy_busy,
            "overlap_ns": kernel_busy + copy_busy - busy_ns, "busy_ns": busy_ns, "idle_ns": window_ns - busy_ns,
            "kernel_sum_ns": int(inside[is_kernel].sum()), "kernels": int(touching[is_kernel].sum()),
            "copies": int(touching[~is_kernel].sum()), "gaps_ns": intervals.gaps(busy, win).tolist(),
            "kernel_times": times.to_dicts()}


# -- summaries -----------------------------------------------------------------------------------------------------
def utilization_summary(parts: pl.DataFrame, *, by: Sequence[str] = ("report",),
                        short_gap_ns: int = SHORT_GAP_NS, launch_gap_ns: int = LAUNCH_GAP_NS) -> pl.DataFrame:
    """Utilization per (``by`` keys, device_id[, stream_id]) from :func:`gpu_utilization` rows (tagged with
    ``report`` and metadata over a collection). Times and gaps are pooled over the group's reports.

    Columns: the keys, ``window``, ``window_instances``, the ``_ns`` totals of :func:`gpu_utilization`,
    ``utilization_pct`` (kernel busy / window), ``copy_busy_pct``, ``busy_pct``, ``idle_pct``, ``idle_gaps``,
    ``gap_us_{p50,p95,max}``, ``short_gap_idle_pct`` (share of idle time in gaps shorter than
    ``short_gap_ns``, default 10 µs), ``launch_gap_idle_pct`` (same for ``launch_gap_ns``, default 100 µs),
    ``launch_bound`` (idle ≥ 50 % of the window and ≥ 50 % of the idle time in launch gaps),
    ``top_kernel`` and ``top_kernel_pct`` (its summed time inside the window / kernel busy time)."""
    group = _units(parts, by)
    sums = parts.group_by(group).agg(
        pl.col("window").first(), pl.col("window_instances").sum(),
        *[pl.col(c).sum() for c in _SUM_COLUMNS],
    )
    gaps = (parts.select(*group, "gaps_ns").explode("gaps_ns").group_by(group).agg(
        pl.col("gaps_ns").drop_nulls().len().cast(pl.Int64).alias("idle_gaps"),
        (pl.col("gaps_ns").quantile(0.5, interpolation="linear") / 1e3).alias("gap_us_p50"),
        (pl.col("gaps_ns").quantile(0.95, interpolation="linear") / 1e3).alias("gap_us_p95"),
        (pl.col("gaps_ns").max() / 1e3).alias("gap_us_max"),
        pl.col("gaps_ns").filter(pl.col("gaps_ns") < short_gap_ns).sum().cast(pl.Int64).alias("_short_ns"),
        pl.col("gaps_ns").filter(pl.col("gaps_ns") < launch_gap_ns).sum().cast(pl.Int64).alias("_launch_ns"),
    ))
    top = _kernel_times(parts, group).filter(pl.col("_rank") == 0).select(
        *group, top_kernel="name", _top_ns="time_ns")
    out = (sums.join(gaps, on=group, how="left", nulls_equal=True)
           .join(top, on=group, how="left", nulls_equal=True))
    pct = _pct_of("window_ns")
    pct_idle = _pct_of("idle_ns")
    out = out.with_columns(
        utilization_pct=pct("kernel_busy_ns"), copy_busy_pct=pct("copy_busy_ns"), busy_pct=pct("busy_ns"),
        idle_pct=pct("idle_ns"),
        short_gap_idle_pct=pct_idle("_short_ns"), launch_gap_idle_pct=pct_idle("_launch_ns"),
        top_kernel_pct=pl.when(pl.col("kernel_busy_ns") > 0).then(100 * pl.col("_top_ns") / pl.col("kernel_busy_ns")),
    )
    out = out.with_columns(launch_bound=(pl.col("idle_pct").fill_null(0) >= LAUNCH_BOUND_IDLE_PCT)
                           & (pl.col("launch_gap_idle_pct").fill_null(0) >= LAUNCH_BOUND_GAP_PCT))
    return out.select(
        *group, "window", "window_instances", "window_ns", "kernel_busy_ns", "copy_busy_ns", "overlap_ns", "busy_ns",
        "idle_ns", "utilization_pct", "copy_busy_pct", "busy_pct", "idle_pct", "kernel_sum_ns", "kernels", "copies",
        pl.col("idle_gaps").fill_null(0), "gap_us_p50", "gap_us_p95", "gap_us_max", "short_gap_idle_pct",
        "launch_gap_idle_pct", "launch_bound", "top_kernel", "top_kernel_pct",
    ).sort(group, nulls_last=True)


def _units(parts: pl.DataFrame, by: Sequence[str]) -> list[str]:
    """The ``by`` keys and the unit of a row: the GPU, and the stream when split (``by`` may add ``rank``)."""
    unit = [k for k in ("device_id", "stream_id") if k in parts.columns]
    return list(dict.fromkeys([*by, *unit]))


def _pct_of(denominator: str) -> Callable[[str], pl.Expr]:
    return lambda column: pl.when(pl.col(denominator) > 0).then(
        100 * pl.col(column).fill_null(0) / pl.col(denominator))


def _kernel_times(parts: pl.DataFrame, group: list[str]) -> pl.DataFrame:
    """Per group and kernel name: instances and summed time inside the window, ranked (0 = most time)."""
    exploded = parts.select(*group, "kernel_times").explode("kernel_times").drop_nulls("kernel_times").unnest(
        "kernel_times")
    if exploded.is_empty():
        return pl.DataFrame(schema={**{k: parts.schema[k] for k in group}, "name": pl.String, "instances": pl.Int64,
                                    "time_ns": pl.Int64, "_rank": pl.Int64})
    totals = exploded.group_by([*group, "name"]).agg(pl.col("instances").sum(), pl.col("time_ns").sum())
    totals = totals.sort([*group, "time_ns", "name"], descending=[False] * len(group) + [True, False], nulls_last=True)
    return totals.with_columns(_rank=pl.int_range(pl.len()).over(group).cast(pl.Int64))  # group holds the GPU


def top_kernels(parts: pl.DataFrame, *, by: Sequence[str] = ("report",), top: int = 10) -> pl.DataFrame:
    """The ``top`` kernels by time inside the window per (``by`` keys, device_id[, stream_id]): ``name``,
    ``instances``, ``time_ns`` (summed durations inside the window), ``busy_share_pct`` (time_ns / kernel busy
    time of the group; shares add up to more than 100 % only where kernels ran concurrently)."""
    group = _units(parts, by)
    busy = parts.group_by(group).agg(pl.col("kernel_busy_ns").sum())
    ranked = _kernel_times(parts, group)
    if top:
        ranked = ranked.filter(pl.col("_rank") < top)
    out = ranked.join(busy, on=group, how="left", nulls_equal=True).with_columns(
        busy_share_pct=pl.when(pl.col("kernel_busy_ns") > 0).then(100 * pl.col("time_ns") / pl.col("kernel_busy_ns")))
    return out.select(*group, "name", "instances", "time_ns", "busy_share_pct").sort(
        [*group, "time_ns", "name"], descending=[False] * len(group) + [True, False], nulls_last=True)
