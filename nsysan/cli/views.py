"""How each analysis is shown as a terminal table: the one place for titles, columns, units and top-N.

Files (csv, json, parquet) always get the library's frame unchanged: every column, integer ns, full names.
A table view picks the columns people read first (in order of importance: those that do not fit the terminal
are left out from the end), shows integer-ns columns in ms and byte totals in MB, and keeps the top rows per
group where an analysis lists many.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class View:
    """``title`` may name the call's options as ``{window}``-style fields (filled by :meth:`apply`; a field given
    as a function is called with the result's frame)."""

    title: str
    columns: tuple[str, ...]
    #: Integer-ns columns shown in ms in a table: ``x_ns`` becomes ``x_ms``.
    ms: tuple[str, ...] = ()
    #: Byte totals shown in MB (1e6 B) in a table: ``bytes_total`` becomes ``mb_total``.
    megabytes: tuple[str, ...] = ()
    #: Leading columns chosen from the result itself (when they depend on the data, as NUMA's pair keys do).
    leading: Callable[[pl.DataFrame], tuple[str, ...]] | None = None
    #: Columns left out first when the terminal is too narrow (the others go from the end).
    drop_first: tuple[str, ...] = ()
    #: Shorter headers for a table (files keep the library's names).
    labels: tuple[tuple[str, str], ...] = ()
    #: Columns of demangled kernel names, shown without template arguments and parameter lists in a table.
    kernel_names: tuple[str, ...] = ()

    def apply(self, frame: pl.DataFrame, fmt: str, *, keys: Sequence[str] = (), top: int | None = None,
              **fields: object) -> tuple[pl.DataFrame, dict[str, Any]]:
        """The frame to write and the arguments of :func:`nsysan.render.emit` that shape its table. Only a
        table is changed: units, top rows per ``keys`` group."""
        import polars as pl

        # A field may depend on the result (the baseline group a comparison used): a function of the frame.
        title = self.title.format(**{k: v(frame) if callable(v) else v for k, v in fields.items()})
        if fmt != "table":
            return frame, {"title": title}
        if top:
            rank = pl.int_range(pl.len())
            frame = frame.filter((rank.over(list(keys)) if keys else rank) < top)
        frame = frame.with_columns(
            *[pl.col(c).map_elements(compact_kernel_name, return_dtype=pl.String)
              for c in self.kernel_names if c in frame.columns],
            *[(pl.col(c) / 1e6).alias(c.removesuffix("_ns") + "_ms") for c in self.ms if c in frame.columns],
            *[(pl.col(c) / 1e6).alias("mb_" + c.removeprefix("bytes_")) for c in self.megabytes if c in frame.columns])
        leading = self.leading(frame) if self.leading else ()
        columns = (*keys, *leading, *(self.columns or frame.columns))
        labels = {old: new for old, new in self.labels if old in frame.columns and new not in frame.columns}
        rename = lambda names: tuple(labels.get(n, n) for n in names)  # noqa: E731
        return frame.rename(labels), {"title": title, "columns": rename(columns), "drop_first": rename(self.drop_first)}


LATENCY = View("Stage latency (ms): {selection}", (
    "range", "instances", "range_ms_mean", "range_ms_p95", "gpu_proj_ms_mean", "gpu_proj_ms_p95",
    "gpu_busy_ms_mean", "gpu_ops_total"), drop_first=("gpu_ops_total", "gpu_busy_ms_mean"))
TRACE = View("NVTX range instances (ms): {selection}", (
    "report", "range", "level", "parent", "start_ns", "range_ms", "gpu_proj_ms", "gpu_busy_ms", "gpu_ops", "pid",
    "tid"), ms=("range_ns", "gpu_proj_ns", "gpu_busy_ns"), drop_first=("tid", "pid", "level"))
KERNELS = View("CUDA kernels (ms): {selection}", (
    "name", "instances", "time_pct", "gpu_ms_mean", "gpu_ms_p50", "gpu_ms_p95", "gpu_ms_max"),
    drop_first=("gpu_ms_max", "gpu_ms_p50"), kernel_names=("name",))
INFO = View("What each export holds", (
    "report", "nsys_version", "export_schema", "nvtx_ranges", "kernels", "memcpys", "memsets", "gpus"))
BANDWIDTH = View("Copy bandwidth (GB/s = bytes / summed copy time): {selection}", (
    "stage", "direction", "src_kind", "dst_kind", "bandwidth_gbps", "copies", "mb_total", "time_total_ms",
    "copy_gbps_p50", "copy_gbps_p95", "tiny_copies", "flags"), ms=("time_total_ns", "time_union_ns"),
    megabytes=("bytes_total",), drop_first=("copy_gbps_p95", "tiny_copies", "time_total_ms", "copy_gbps_p50"))
COPY_SIZES = View("Copy sizes: {selection}", (
    "stage", "direction", "src_kind", "dst_kind", "size_bucket", "copies", "mb_total", "bandwidth_gbps",
    "time_total_ms"), ms=("time_total_ns",), megabytes=("bytes_total",))
UTILIZATION = View("GPU utilization over {window} (busy = union of op intervals, not a sum)", (
    "device_id", "stream_id", "utilization_pct", "launch_bound", "window_ms", "kernel_busy_ms", "copy_busy_ms",
    "idle_ms", "idle_gaps", "gap_us_p50", "gap_us_p95", "launch_gap_idle_pct", "short_gap_idle_pct", "top_kernel"),
    ms=("window_ns", "kernel_busy_ns", "copy_busy_ns", "overlap_ns", "idle_ns"),
    drop_first=("short_gap_idle_pct", "gap_us_p95", "idle_ms", "copy_busy_ms", "idle_gaps"),
    kernel_names=("top_kernel",))
TOP_KERNELS = View("Top kernels by time inside {window}", (
    "device_id", "stream_id", "name", "instances", "time_ms", "busy_share_pct"), ms=("time_ns",),
    kernel_names=("name",))
THROUGHPUT = View("Throughput over the measured batches: {selection}", (
    "runs", "ranks", "batches", "batch_size", "samples_per_s", "batches_per_s", "window_ms", "batch_ms_p50",
    "batch_ms_p95", "note"), ms=("window_ns",), drop_first=("window_ms", "ranks", "batches_per_s"))
COMPARE = View("Ratio to baseline {baseline} ({interval}; a verdict needs a change beyond {min_effect:g} %)", (
    "stage", "direction", "metric", "statistic", "value", "ratio", "ci_low", "ci_high", "verdict", "n"),
    drop_first=("n", "direction", "value"), labels=(("statistic", "stat"),))
def compact_kernel_name(name: str | None) -> str | None:
    """``void ns::kernel<int, 4>(float*, int)`` -> ``ns::kernel<…>(…)``: the kernel's own name, which is what
    tells kernels apart in a narrow column (the full name stays in csv/json/parquet)."""
    if not name:
        return name
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            if depth == 0:
                out.append(ch + "…")
            depth += 1
        elif ch in ">)" and depth:
            depth -= 1
            if depth == 0:
                out.append(ch)
        elif depth == 0:
            out.append(ch)
    text = "".join(out).strip()
    return text.removeprefix("void ").strip() or name


def _pair_keys(penalty: pl.DataFrame) -> tuple[str, ...]:
    """The pair keys worth a column: the model, and any other key that differs between rows."""
    keys = penalty.columns[:penalty.columns.index("local_numa")]
    return tuple(k for k in keys if k == "model" or penalty[k].n_unique() > 1)


NUMA = View("NUMA penalty: remote / local - 1 ({interval}), most sensitive first", (
    "local_numa", "remote_numa", "stage", "direction", "metric", "statistic", "local_value", "remote_value",
    "penalty_pct", "ci_low_pct", "ci_high_pct", "verdict"), leading=_pair_keys,
    drop_first=("local_numa", "direction", "local_value", "remote_value"), labels=(("statistic", "stat"),))
NUMA_HEATMAP = View("NUMA penalty (%) of {metric} {statistic}, most sensitive first", ())
COMM = View("NCCL communication per rank (ms; exposed = not overlapped by compute): {selection}", (
    "rank", "device_id", "stage", "collective", "calls", "comm_ms", "compute_ms", "overlap_ms", "exposed_comm_ms",
    "exposed_pct", "algbw_gbps", "busbw_gbps"), drop_first=("device_id", "compute_ms", "algbw_gbps"))
SKEW = View("Arrival at NCCL collectives per rank (ms; late = after the first rank): {selection}", (
    "rank", "collective", "calls", "arrival_late_ms_p50", "arrival_late_ms_p95", "wait_ms_total", "straggler_calls",
    "busbw_gbps"), drop_first=("busbw_gbps",))
SKEW_STEPS = View("The straggler of each step (the rank that arrived last at most of its NCCL calls): {selection}", (
    "step", "calls", "straggler_rank", "straggler_calls", "straggler_late_ms_total", "max_late_ms"))
EXPORT = View("nsys exports", ("report", "status", "outputs", "reason"))


def checklist(checks: Sequence[dict[str, str]], width: int) -> str:
    """``nsysan doctor``'s checks as lines: ``status  check: detail``, the fix wrapped and indented below."""
    import textwrap

    lines = []
    for c in checks:
        lines += textwrap.wrap(f"{c['check']}: {c['detail']}", width, initial_indent=f"{c['status']:<8}",
                               subsequent_indent=" " * 8) or [c["status"]]
        if c.get("fix"):
            lines += textwrap.wrap(f"fix: {c['fix']}", width, initial_indent=" " * 8, subsequent_indent=" " * 13)
    return "\n".join(lines) + "\n"
