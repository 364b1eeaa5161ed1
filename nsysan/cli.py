"""The ``nsysan`` command: a thin layer that parses options, calls the library and writes the result.

Data goes to stdout (or ``-o FILE``), messages and progress to stderr. Exit codes: 0 ok, 1 user error
(nothing could be analysed), 2 usage error, 3 some inputs failed while others were analysed.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from nsysan import api, cli_compare, cli_export, cli_gpu, cli_run
from nsysan.cli_common import (By, FormatOpt, Output, Paths, Sample, finish, keys_from, progress_bar, runs_from,
                               user_errors)
from nsysan.errors import NsysanError
from nsysan.render import emit, infer_format

app = typer.Typer(
    name="nsysan", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Answers from Nsight Systems profiles: per-stage latency, kernels, and more, over many reports.",
)

LATENCY_TABLE = ("range", "instances", "range_ms_mean", "range_ms_p95", "gpu_proj_ms_mean", "gpu_proj_ms_p95",
                 "gpu_busy_ms_mean", "gpu_ops_total")
TRACE_COLUMNS = ("report", "range", "level", "parent", "start_ns", "range_ns", "gpu_proj_start_ns", "gpu_proj_ns",
                 "gpu_busy_ns", "gpu_ops")


@app.command()
def latency(
    paths: Paths = None,
    sample: Sample = False,
    by_model: Annotated[bool, typer.Option("--by-model", help="Pool instances of all reports of a model "
                                           "(same as --by model,variant).")] = False,
    by: By = None,
    trace: Annotated[bool, typer.Option("--trace", help="One row per range instance instead of statistics.")] = False,
    exclude_within: Annotated[Optional[list[str]], typer.Option(
        "--exclude-within", help="Drop instances inside (or named like) ranges matching this glob, e.g. 'warmup_*'. "
        "Repeatable.")] = None,
    skip_first: Annotated[int, typer.Option(help="Drop the first N instances of every range name.", min=0)] = 0,
    merge_numbered: Annotated[bool, typer.Option(
        "--merge-numbered", help="Summarise numbered ranges together: batch_7 and batch_8 become batch_*.")] = False,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """Per-stage latency: CPU time of each NVTX range and the GPU work it launched.

    GPU projection follows nsys stats' nvtx_gpu_proj_sum (docs/metrics.md).

    Example: nsysan latency --by-model --sample --exclude-within 'warmup_*' --merge-numbered
    """
    with user_errors():
        runs = runs_from(paths, sample, output)
        keys = keys_from(by, ("model", "variant") if by_model else ("report",))
        chosen = infer_format(fmt, output)
        with progress_bar(len(runs.paths)) as progress:
            if trace:
                result = api.latency_trace(runs, exclude_within=exclude_within, skip_first=skip_first,
                                           merge_numbered=merge_numbered, progress=progress)
            else:
                result = api.latency(runs, by=keys, exclude_within=exclude_within, skip_first=skip_first,
                                     merge_numbered=merge_numbered, progress=progress)
        if not result.is_empty():
            if trace:
                result = result.select(*TRACE_COLUMNS, *[c for c in result.columns if c not in TRACE_COLUMNS])
            emit(result, chosen, output, title="NVTX ranges (ms)" if not trace else "",
                 table_columns=TRACE_COLUMNS if trace else (*keys, *LATENCY_TABLE))
        finish(runs, analysed=not result.is_empty())


@app.command()
def kernels(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    names: Annotated[str, typer.Option(help="Kernel names: demangled | short | mangled.")] = "demangled",
    top: Annotated[int, typer.Option(help="In a table, show only the N kernels with most time per group "
                                     "(0: all). Files always get every kernel.", min=0)] = 20,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """Time per CUDA kernel name, as nsys stats' cuda_gpu_kern_sum counts it.

    Example: nsysan kernels --sample --names short --top 5
    """
    with user_errors():
        if names not in ("demangled", "short", "mangled"):
            raise NsysanError(f"--names must be demangled, short or mangled, not {names!r}")
        runs = runs_from(paths, sample, output)
        keys = keys_from(by, ("report",))
        chosen = infer_format(fmt, output)
        with progress_bar(len(runs.paths)) as progress:
            result = api.kernels(runs, by=keys, names=names, progress=progress)  # type: ignore[arg-type]
        if not result.is_empty():
            if chosen == "table" and top:
                import polars as pl

                result = result.filter(pl.int_range(pl.len()).over(list(keys)) < top)
            emit(result, chosen, output, title="CUDA kernels (ms)",
                 table_columns=(*keys, "name", "instances", "time_pct", "gpu_ms_mean", "gpu_ms_p50", "gpu_ms_p95",
                                "gpu_ms_max"))
        finish(runs, analysed=not result.is_empty())


@app.command()
def info(paths: Paths = None, sample: Sample = False, fmt: FormatOpt = None, output: Output = None) -> None:
    """What each export holds: nsys version, export schema, and how many ranges, kernels and copies.

    Example: nsysan info outputs/
    """
    from nsysan.analyses.inventory import inventory

    with user_errors():
        runs = runs_from(paths, sample, output)
        with progress_bar(len(runs.paths)) as progress:
            result = runs.concat(inventory, progress)
        if not result.is_empty():
            result = result.select("report", *[c for c in result.columns if c != "report"])
            emit(result, infer_format(fmt, output), output, table_columns=(
                "report", "nsys_version", "export_schema", "nvtx_ranges", "kernels", "memcpys", "memsets", "gpus"))
        finish(runs, analysed=not result.is_empty())


app.add_typer(cli_gpu.app)
app.add_typer(cli_compare.app)
app.add_typer(cli_run.app)
app.command()(cli_export.export)
app.command()(cli_export.doctor)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
