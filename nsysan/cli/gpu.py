"""``nsysan kernels``, ``bandwidth``, ``utilization`` and ``throughput``: what the GPU did and how fast."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from nsysan import defaults
from nsysan.cli import views
from nsysan.cli.options import (
    By,
    ByModel,
    FormatOpt,
    Names,
    Output,
    Paths,
    Sample,
    analyse,
    keys_from,
    execution_options, selection_options,
)

app = typer.Typer()


@app.command()
@selection_options
@execution_options
def kernels(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    names: Names = "demangled",
    top: Annotated[int, typer.Option(help="In a table, show only the N kernels with most time per group "
                                     "(0: all). Files always get every kernel.", min=0)] = defaults.TOP_KERNELS,
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
) -> None:
    """Time per CUDA kernel name, as nsys stats' cuda_gpu_kern_sum counts it (warm-up kernels left out).

    Example: nsysan kernels --sample --names short --top 5
    """
    import nsysan

    keys = keys_from(by, by_model)
    analyse(lambda runs, progress: nsysan.kernels(runs, by=keys, names=names, select=select, progress=progress),
            views.KERNELS, paths=paths, sample=sample, fmt=fmt, output=output, keys=keys, top=top,
            selection=select.describe())


@app.command()
@selection_options
@execution_options
def bandwidth(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    by_stage: Annotated[bool, typer.Option(
        "--by-stage", help="Split by the innermost NVTX range that launched each copy (as latency ties ops "
        "to ranges).")] = False,
    histogram: Annotated[bool, typer.Option(
        "--histogram", help="Copy sizes in power-of-two buckets instead of the summary.")] = False,
    memset: Annotated[bool, typer.Option(
        "--memset/--no-memset", help="Include memsets as the direction 'Memset' (as nsys stats does).")] = True,
    tiny_bytes: Annotated[int, typer.Option(
        help="Copies smaller than this many bytes are tiny; flagged when they are half the copies or more.",
        min=1)] = defaults.TINY_BYTES,
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
) -> None:
    """Copy bandwidth per direction and memory kind (pageable, pinned, device, ...), with what looks wrong.

    bandwidth_gbps = bytes / summed copy time (nsys's time totals; 1 GB = 1e9 B); bandwidth_union_gbps
    divides by the time any copy of the group ran (docs/metrics.md).

    Example: nsysan bandwidth --sample --by-stage
    """
    import nsysan

    keys = keys_from(by, by_model)
    if histogram:
        call = lambda runs, progress: nsysan.copy_sizes(  # noqa: E731
            runs, by=keys, by_stage=by_stage, include_memset=memset, select=select, progress=progress)
        view = views.COPY_SIZES
    else:
        call = lambda runs, progress: nsysan.bandwidth(  # noqa: E731
            runs, by=keys, by_stage=by_stage, include_memset=memset, tiny_bytes=tiny_bytes, select=select,
            progress=progress)
        view = views.BANDWIDTH
    analyse(call, view, paths=paths, sample=sample, fmt=fmt, output=output, keys=keys, selection=select.describe())


@app.command()
@selection_options
@execution_options
def utilization(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    window: Annotated[str, typer.Option(
        "--window", help="capture (first to last traced event), batches (the measured batches), or an NVTX "
        "range name/glob, e.g. forward (its selected instances).")] = "capture",
    by_stream: Annotated[bool, typer.Option("--by-stream", help="One row per CUDA stream instead of per GPU.")] = False,
    kernels: Annotated[bool, typer.Option(
        "--kernels", help="List the top kernels by time inside the window instead of the summary.")] = False,
    top: Annotated[int, typer.Option(help="With --kernels: kernels per group (0: all).", min=0)] = 10,
    names: Names = "short",
    short_gap_us: Annotated[float, typer.Option(help="Idle gaps shorter than this are short.", min=0)] = (
        defaults.SHORT_GAP_NS / 1e3),
    launch_gap_us: Annotated[float, typer.Option(
        help="Idle gaps shorter than this are launch gaps (the GPU waits for the next launch).", min=0)] = (
        defaults.LAUNCH_GAP_NS / 1e3),
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
) -> None:
    """GPU utilization over a window: kernel and copy busy time, idle gaps, launch-bound or not.

    Busy times are unions of op intervals (overlaps count once), never sums, so they never exceed the
    window; nsys's summed kernel time can exceed 100 %. utilization_pct = kernel busy / window.

    Example: nsysan utilization --sample --window forward
    """
    import nsysan

    keys = keys_from(by, by_model)
    if kernels:
        call = lambda runs, progress: nsysan.top_kernels(  # noqa: E731
            runs, by=keys, window=window, by_stream=by_stream, names=names, top=top, select=select, progress=progress)
        view = views.TOP_KERNELS
    else:
        call = lambda runs, progress: nsysan.utilization(  # noqa: E731
            runs, by=keys, window=window, by_stream=by_stream, names=names, short_gap_ns=round(short_gap_us * 1e3),
            launch_gap_ns=round(launch_gap_us * 1e3), select=select, progress=progress)
        view = views.UTILIZATION
    analyse(call, view, paths=paths, sample=sample, fmt=fmt, output=output, keys=keys, window=window)


@app.command()
@selection_options
@execution_options
def throughput(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Samples per batch for every report (default: each report's metadata: sidecar "
        "batch_size or batch, or bsN in its name).", min=1)] = None,
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
) -> None:
    """Samples/s and batch latency from the per-batch NVTX ranges, measured batches only.

    samples_per_s = batch size x measured batches / (last batch end - first batch start).

    Example: nsysan throughput --sample --by-model
    """
    import nsysan

    keys = keys_from(by, by_model)
    analyse(lambda runs, progress: nsysan.throughput(runs, by=keys, batch_size=batch_size, select=select,
                                                     progress=progress),
            views.THROUGHPUT, paths=paths, sample=sample, fmt=fmt, output=output, keys=keys,
            selection=select.describe())
