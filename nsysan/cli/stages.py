"""``nsysan latency`` and ``nsysan info``: per-stage latency from NVTX ranges, and what each export holds."""
from __future__ import annotations

from typing import Annotated

import typer

from nsysan.cli import views
from nsysan.cli.options import (By, ByModel, FormatOpt, Output, Paths, Sample, analyse, execution_options, keys_from,
                                selection_options)

app = typer.Typer()


@app.command()
@selection_options
@execution_options
def latency(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_model: ByModel = False,
    trace: Annotated[bool, typer.Option("--trace", help="One row per range instance instead of statistics.")] = False,
    attribution: Annotated[str, typer.Option(
        "--attribution", help="Which GPU ops count for a range: thread (nsys's rule: launched by the range's own "
        "thread) or process (by any thread of its process while the range was open, e.g. PyTorch's autograd "
        "thread in backward; an op can then count for ranges of two threads).")] = "thread",
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
) -> None:
    """Per-stage latency: CPU time of each NVTX range and the GPU work it launched.

    GPU projection follows nsys stats' nvtx_gpu_proj_sum (docs/metrics.md). By default warm-up instances
    (`warmup_*`) are left out and numbered ranges pooled (`batch_*`); `--all-instances --no-merge-numbered`
    counts what nsys stats counts.

    Example: nsysan latency --by-model --sample

    Example: nsysan latency --by rank --attribution process ddp_run.sqlite
    """
    import nsysan

    keys = keys_from(by, by_model)
    if trace:
        analyse(lambda runs, progress: nsysan.latency_trace(runs, select=select, attribution=attribution,
                                                            progress=progress),
                views.TRACE, paths=paths, sample=sample, fmt=fmt, output=output, selection=select.describe())
    else:
        analyse(lambda runs, progress: nsysan.latency(runs, by=keys, select=select, attribution=attribution,
                                                      progress=progress),
                views.LATENCY, paths=paths, sample=sample, fmt=fmt, output=output, keys=keys,
                selection=select.describe())


@app.command()
@execution_options
def info(paths: Paths = None, sample: Sample = False, fmt: FormatOpt = None, output: Output = None) -> None:
    """What each export holds: nsys version, export schema, and how many ranges, kernels and copies.

    Example: nsysan info outputs/
    """
    import nsysan

    analyse(lambda runs, progress: nsysan.info(runs, progress=progress), views.INFO, paths=paths, sample=sample,
            fmt=fmt, output=output)
