"""``nsysan report`` (one self-contained HTML page of a study or a set of exports) and ``nsysan plot`` (one
figure of one analysis, as PNG, SVG or PDF): thin layers over :mod:`nsysan.report` and :mod:`nsysan.plots`."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from nsysan.cli.compare import _baseline
from nsysan.cli.figures import FIGURE_SUFFIXES, KINDS, Request, figure_for
from nsysan.cli.options import (
    Paths,
    Sample,
    execution_options,
    finish,
    inputs_from,
    keys_from,
    message,
    selection_options,
    stats_options,
    user_errors,
)
from nsysan.errors import NsysanError

app = typer.Typer()

By = Annotated[Optional[str], typer.Option(
    "--by", help="Group by these comma-separated keys: report, run metadata (model, numa, variant, ...) or per-row "
    "keys (pid, device_id, ...). Default: model and the run metadata that varies between the exports (variant, "
    "gpu, numa), else report.")]

Baseline = Annotated[Optional[str], typer.Option(
    "--baseline", help="The comparison's baseline group as key=value pairs of --by keys (e.g. variant=eager; an "
    "empty value matches a missing one). Default: each model's variants against the run without a variant.")]
Attribution = Annotated[str, typer.Option(
    "--attribution", help="Which GPU ops count for a range: thread (nsys's rule), process (any thread of its "
    "process, e.g. PyTorch's autograd thread in backward) or auto (thread unless other threads launched some "
    "ranges' GPU work).")]


@contextmanager
def _status(what: str) -> Iterator[Callable[[str], None] | None]:
    """A one-line status on stderr while the report is built, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console

    with Console(stderr=True).status(what) as status:
        yield lambda step: status.update(f"{what}: {step}")


@app.command()
@execution_options
@stats_options
@selection_options
def report(
    paths: Paths = None,
    sample: Sample = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write (atomically; never over an "
                                         "input or an nsys export).")] = Path("report.html"),
    by: By = None,
    baseline: Baseline = None,
    attribution: Attribution = "auto",
    title: Annotated[Optional[str], typer.Option("--title", help="The page's title (default: the study's name).")] = None,
    figures: Annotated[str, typer.Option("--figures", help="How figures are embedded: svg (sharp at any zoom) or png "
                                         "(smaller for very busy figures).")] = "svg",
    select: object = None,
    stats: object = None,
) -> None:
    """One self-contained HTML report: what was run, findings, and every analysis with figures and tables.

    For a study folder made by `nsysan run` (its results.json and experiment_summary.json are read), a folder
    of exports, or export files. Findings lead the page, each computed from the numbers and pointing to its
    figure and table; a section that cannot be computed says why. The file needs no network: figures are
    embedded, there is no script. Default grouping: model and the run metadata that varies (else report).

    Example: nsysan report --sample -o report.html

    Example: nsysan report outputs/compile_study/2026-11-22/21-25-43 --baseline variant=eager -o compile.html
    """
    from nsysan.report import build_report, write_report

    with user_errors():
        if output.suffix.lower() not in (".html", ".htm"):
            raise NsysanError(f"{output}: the report is HTML; give a file name ending in .html")
        runs = inputs_from(paths, sample, output)
        given = list(paths or []) or list(runs.paths)
        with _status("nsysan report") as step:
            page = build_report(runs, by=keys_from(by, default=()) or None, select=select, baseline=_baseline(baseline),
                                attribution=attribution, stats=stats, title=title, figures=figures, inputs=given,
                                step=step)
            write_report(page, output, inputs=[*given, *runs.paths])
    message(f"nsysan: wrote {output} ({output.stat().st_size / 1e6:.1f} MB): {len(page.findings)} finding(s), "
            f"{len(page.figures)} figure(s), {len(page.tables)} table(s)")
    unreadable = page.meta.get("unreadable", [])
    if unreadable:  # listed in the page; the exit code says some inputs failed, as every command's does
        import polars as pl

        from nsysan.engine import Result

        finish(Result(pl.DataFrame(), tuple(unreadable), (), len(runs) - len(unreadable)), len(runs))


# -- nsysan plot ---------------------------------------------------------------------------------------------------------
@app.command()
@execution_options
@stats_options
@selection_options
def plot(
    kind: Annotated[str, typer.Argument(help="The figure: " + "; ".join(f"{k}: {v}" for k, v in KINDS.items()) + ".",
                                        show_default=False)],
    paths: Paths = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The figure file: .png, .svg or .pdf "
                                                   "(written atomically; never over an input).")] = None,
    sample: Sample = False,
    by: By = None,
    baseline: Baseline = None,
    window: Annotated[Optional[str], typer.Option(
        "--window", help="busy, gaps, kernels: capture, batches or an NVTX range name/glob (default batches). "
        "timeline: capture, GLOB (all measured instances), GLOB:COUNT[:SKIP] (COUNT instances of each rank) or "
        "START_NS,END_NS (default: three measured batches, else the whole capture).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="numa: the metric of the heatmap (range_ms, gpu_proj_ms, "
                                        "gpu_busy_ms, bandwidth_gbps, throughput_per_s).")] = "range_ms",
    x: Annotated[Optional[str], typer.Option("--x", help="scaling: depth, dim, patch, patches or resolution "
                                             "(default: the shape key the models vary in).")] = None,
    dpi: Annotated[int, typer.Option("--dpi", min=30, max=600, help="Resolution of a PNG.")] = 120,
    select: object = None,
    stats: object = None,
) -> None:
    """One figure of one analysis, written as PNG, SVG or PDF.

    The figure is drawn by nsysan.plots from the analysis's own frame (the same numbers as the matching
    command's table). The timeline draws the first report given.

    Example: nsysan plot stages --sample -o stages.png

    Example: nsysan plot timeline run.sqlite --window 'batch_*:5:10' -o timeline.svg
    """
    import io

    from nsysan.cli.options import progress_bar
    from nsysan.render import write_atomic

    with user_errors():
        if kind not in KINDS:
            raise NsysanError(f"unknown figure {kind!r}; choose from {', '.join(KINDS)}")
        if output is None or output.suffix.lower() not in FIGURE_SUFFIXES:
            raise NsysanError(f"give the figure file with -o, ending in {', '.join(FIGURE_SUFFIXES)}")
        runs = inputs_from(paths, sample, output)
        with progress_bar(len(runs)) as progress:
            try:
                request = Request(runs, keys=keys_from(by, default=()) or None, select=select, stats=stats,
                                  baseline=_baseline(baseline), window=window, metric=metric, x=x, progress=progress)
                fig, result = figure_for(kind, request)
            except ValueError as e:  # the figure cannot draw these rows
                raise NsysanError(f"cannot draw {kind}: {e}") from None
        for note in result.notes:
            message(f"nsysan: {note}")
        if fig is None:
            reasons = [f.reason for f in result.failures] or list(result.notes) or ["no data"]
            raise NsysanError(f"nothing to draw for {kind}: {reasons[0]}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=output.suffix.lower().lstrip("."), dpi=dpi, metadata=_metadata(output))
        write_atomic(output, buffer.getvalue(), inputs=[*(paths or []), *runs.paths])
    message(f"nsysan: wrote {output}")
    finish(result, len(runs))


def _metadata(output: Path) -> dict[str, Any]:
    suffix = output.suffix.lower()
    if suffix == ".svg":
        return {"Date": None}
    if suffix == ".pdf":
        return {"CreationDate": None, "ModDate": None}
    return {"Software": None}
