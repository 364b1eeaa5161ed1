"""CLI commands ``nsysan bandwidth``, ``nsysan utilization`` and ``nsysan throughput``.

Same conventions as :mod:`nsysan.cli` (helpers from :mod:`nsysan.cli_common`): data to stdout or ``-o FILE``, messages to
stderr, ``--format table|csv|json|parquet``, ``--by KEYS`` to pool reports by metadata keys. Registered on the
main app by :mod:`nsysan.cli`.
"""
from __future__ import annotations

from typing import Annotated, Optional

import polars as pl
import typer

from nsysan.analyses import bandwidth as bw
from nsysan.analyses import throughput as tp
from nsysan.analyses import utilization as ut
from nsysan.cli_common import (By, FormatOpt, Output, Paths, Sample, finish, keys_from, message, progress_bar,
                               runs_from, user_errors)
from nsysan.errors import NsysanError
from nsysan.render import emit, infer_format

app = typer.Typer()

BatchPattern = Annotated[str, typer.Option(
    "--batches", help="Glob naming the per-batch NVTX ranges; the outermost matches are the batches.")]
ExcludeWithin = Annotated[str, typer.Option(
    "--exclude-within", help="Leave out ranges named like, or nested inside ranges named like, this glob "
    "(warm-up); '' keeps everything.")]
ByModel = Annotated[bool, typer.Option("--by-model", help="Pool the reports of a model (same as --by model,variant).")]


def _ms(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """For tables only: ``x_ns`` integer columns shown as ``x_ms``."""
    return frame.with_columns([(pl.col(c) / 1e6).alias(c.removesuffix("_ns") + "_ms") for c in columns
                               if c in frame.columns])


@app.command()
def bandwidth(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    by_stage: Annotated[bool, typer.Option(
        "--by-stage", help="Split by the innermost NVTX range that launched each copy (as latency ties ops "
        "to ranges).")] = False,
    merge_numbered: Annotated[bool, typer.Option(
        "--merge-numbered", help="With --by-stage: stages batch_7 and batch_8 become batch_*.")] = False,
    histogram: Annotated[bool, typer.Option(
        "--histogram", help="Copy sizes in power-of-two buckets instead of the summary.")] = False,
    memset: Annotated[bool, typer.Option(
        "--memset/--no-memset", help="Include memsets as the direction 'Memset' (as nsys stats does).")] = True,
    tiny_bytes: Annotated[int, typer.Option(
        help="Copies smaller than this many bytes are tiny; flagged when they are half the copies or more.",
        min=1)] = bw.TINY_BYTES,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """Copy bandwidth per direction and memory kind (pageable, pinned, device, ...), with what looks wrong.

    bandwidth_gbps = bytes / summed copy time (nsys's time totals; 1 GB = 1e9 B); bandwidth_union_gbps
    divides by the time any copy of the group ran (docs/metrics.md).

    Example: nsysan bandwidth --sample --by-stage
    """
    with user_errors():
        runs = runs_from(paths, sample, output)
        keys = keys_from(by, ("model", "variant") if by_model else ("report",))
        chosen = infer_format(fmt, output)
        with progress_bar(len(runs.paths)) as progress:
            result = bw.bandwidth(runs, by=keys, by_stage=by_stage, include_memset=memset, tiny_bytes=tiny_bytes,
                                  merge_numbered=merge_numbered, histogram=histogram, progress=progress)
        if not result.is_empty():
            stage = ("stage",) if by_stage else ()
            if chosen == "table":
                result = _ms(result, "time_total_ns", "time_union_ns").with_columns(
                    (pl.col("bytes_total") / 1e6).alias("mb_total"))
            if histogram:
                columns = (*keys, *stage, *bw.COPY_KEYS, "size_bucket", "copies", "mb_total", "time_total_ms",
                           "bandwidth_gbps")
            else:
                columns = (*keys, *stage, *bw.COPY_KEYS, "copies", "mb_total", "time_total_ms", "bandwidth_gbps",
                           "copy_gbps_p50", "copy_gbps_p95", "tiny_copies", "flags")
            emit(result, chosen, output, title="Copy size histogram" if histogram else
                 "Copy bandwidth (GB/s = bytes / summed copy time)", table_columns=columns)
        finish(runs, analysed=not result.is_empty())


@app.command()
def utilization(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    window: Annotated[str, typer.Option(
        "--window", help="capture (first to last traced event), batches (the measured batches), or an NVTX "
        "range name/glob, e.g. forward (its instances, outside --exclude-within).")] = "capture",
    by_stream: Annotated[bool, typer.Option("--by-stream", help="One row per CUDA stream instead of per GPU.")] = False,
    kernels: Annotated[bool, typer.Option(
        "--kernels", help="List the top kernels by time inside the window instead of the summary.")] = False,
    top: Annotated[int, typer.Option(help="With --kernels: kernels per group (0: all).", min=0)] = 10,
    names: Annotated[str, typer.Option(help="Kernel names: short | demangled | mangled.")] = "short",
    batches: BatchPattern = tp.BATCH_PATTERN,
    exclude_within: ExcludeWithin = tp.WARMUP_PATTERN,
    short_gap_us: Annotated[float, typer.Option(help="Idle gaps shorter than this are short.", min=0)] = (
        ut.SHORT_GAP_NS / 1e3),
    launch_gap_us: Annotated[float, typer.Option(
        help="Idle gaps shorter than this are launch gaps (the GPU waits for the next launch).", min=0)] = (
        ut.LAUNCH_GAP_NS / 1e3),
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """GPU utilization over a window: kernel and copy busy time, idle gaps, launch-bound or not.

    Busy times are unions of op intervals (overlaps count once), never sums, so they never exceed the
    window; nsys's summed kernel time can exceed 100 %. utilization_pct = kernel busy / window.

    Example: nsysan utilization --sample --window forward
    """
    with user_errors():
        if names not in ("demangled", "short", "mangled"):
            raise NsysanError(f"--names must be short, demangled or mangled, not {names!r}")
        runs = runs_from(paths, sample, output)
        keys = keys_from(by, ("model", "variant") if by_model else ("report",))
        chosen = infer_format(fmt, output)
        with progress_bar(len(runs.paths)) as progress:
            result = ut.utilization(
                runs, by=keys, window=window, by_stream=by_stream, batch_pattern=batches,
                exclude_within=exclude_within or None, names=names,  # type: ignore[arg-type]
                short_gap_ns=round(short_gap_us * 1e3), launch_gap_ns=round(launch_gap_us * 1e3),
                kernels=top if kernels else None, progress=progress)
        if not result.is_empty():
            unit = ("device_id", "stream_id") if by_stream else ("device_id",)
            if kernels:
                if chosen == "table":
                    result = _ms(result, "time_ns")
                columns = (*keys, *unit, "name", "instances", "time_ms", "busy_share_pct")
                title = f"Top kernels by time inside the window ({window})"
            else:
                if chosen == "table":
                    result = _ms(result, "window_ns", "kernel_busy_ns", "copy_busy_ns", "overlap_ns", "idle_ns")
                columns = (*keys, *unit, "window_ms", "kernel_busy_ms", "copy_busy_ms", "idle_ms", "utilization_pct",
                           "idle_gaps", "gap_us_p50", "gap_us_p95", "short_gap_idle_pct", "launch_gap_idle_pct",
                           "launch_bound", "top_kernel")
                title = f"GPU utilization over {window} (busy = union of op intervals, not a sum)"
            emit(result, chosen, output, title=title, table_columns=columns)
        finish(runs, analysed=not result.is_empty())


@app.command()
def throughput(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    batches: BatchPattern = tp.BATCH_PATTERN,
    exclude_within: ExcludeWithin = tp.WARMUP_PATTERN,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Samples per batch for every report (default: each report's metadata: sidecar "
        "batch_size or batch, or bs<N> in its name).", min=1)] = None,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """Samples/s and batch latency from the per-batch NVTX ranges, measured batches only.

    samples_per_s = batch size x measured batches / (last batch end - first batch start).

    Example: nsysan throughput --sample --by-model
    """
    with user_errors():
        runs = runs_from(paths, sample, output)
        keys = keys_from(by, ("model", "variant") if by_model else ("report",))
        chosen = infer_format(fmt, output)
        with progress_bar(len(runs.paths)) as progress:
            result = tp.throughput(runs, by=keys, pattern=batches, exclude_within=exclude_within or None,
                                   batch_size=batch_size, progress=progress)
        if not result.is_empty():
            for row in result.filter(pl.col("note").is_not_null()).iter_rows(named=True):
                label = ", ".join(f"{k}={row[k]}" for k in keys)
                message(f"nsysan: {label}: {row['note']}; samples/s not computed")
            if chosen == "table":
                result = _ms(result, "window_ns")
            emit(result, chosen, output, title="Throughput (measured batches)", table_columns=(
                *keys, "runs", "batches", "batch_size", "window_ms", "samples_per_s", "batches_per_s",
                "batch_ms_p50", "batch_ms_p95", "note"))
        finish(runs, analysed=not result.is_empty())
