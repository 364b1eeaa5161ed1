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
KINDS = {
    "stages": "stage breakdown per group (nsysan latency)",
    "scaling": "latency, throughput and transfer share against model depth/width (--x)",
    "compare": "forest plot of the changes against --baseline, with CIs (nsysan compare)",
    "numa": "NUMA penalty heatmap (nsysan numa; --metric)",
    "bandwidth": "copy bandwidth per direction and memory kind, with copy sizes",
    "busy": "GPU busy and idle shares over --window (nsysan utilization)",
    "gaps": "distribution of the GPU's idle gaps over --window",
    "kernels": "top kernels over --window (nsysan utilization --top)",
    "timeline": "GPU timeline of one report (--window, default three measured batches)",
    "skew": "arrival skew per NCCL call and rank (distributed runs; nsysan skew)",
    "comm": "NCCL communication overlapped and exposed per rank (distributed runs; nsysan comm)",
}
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def timeline_window(text: str | None, patterns: tuple[str, ...]) -> list[Any]:
    """``--window`` of the timeline as nsysan.timeline windows to try in turn: ``capture``; ``GLOB:COUNT[:SKIP]``;
    ``START_NS,END_NS``; a glob (all its measured instances); default three measured batches of the first batch
    pattern the report has, else (no such range, or no NVTX at all: a CUDA-only capture) the whole capture."""
    if not text:
        # The capture is the last resort, as in nsysan report: an export without batch ranges still has GPU rows.
        return [*((p, 3) for p in patterns), "capture"]
    if text == "capture":
        return ["capture"]
    if "," in text:
        lo, _, hi = text.partition(",")
        try:
            return [(int(lo), int(hi))]
        except ValueError:
            raise NsysanError(f"--window START_NS,END_NS takes whole nanoseconds, not {text!r}") from None
    glob, *numbers = text.split(":")
    try:
        counts = [int(n) for n in numbers]
    except ValueError:
        raise NsysanError(f"--window takes capture, GLOB, GLOB:COUNT[:SKIP] or START_NS,END_NS, not {text!r}") from None
    if len(counts) > 2 or any(n < 0 for n in counts) or (counts and counts[0] < 1):
        raise NsysanError(f"--window takes GLOB:COUNT[:SKIP] with COUNT >= 1, not {text!r}")
    return [(glob, *counts)] if counts else [glob]


def figure_for(kind: str, runs: Any, *, keys: tuple[str, ...] | None, select: Any, stats: dict[str, Any],
               baseline: dict[str, Any] | None, window: str | None, metric: str, x: str | None,
               progress: Any = None) -> tuple[Any, Any]:
    """(the matplotlib Figure, the Result it was drawn from) for one ``nsysan plot`` kind."""
    import polars as pl

    import nsysan
    from nsysan import plots
    from nsysan.engine import pooled

    def by() -> tuple[str, ...]:
        if keys:
            return keys
        from nsysan.report.data import auto_by

        return auto_by(runs)

    if kind == "stages":
        result = nsysan.latency(runs, by=by(), select=select, progress=progress)
        return (plots.stage_breakdown(result.frame, by=list(by())) if not result.frame.is_empty() else None), result
    if kind == "scaling":
        chosen = tuple(dict.fromkeys(["model", *by()]))
        result = nsysan.latency(runs, by=chosen, select=select, progress=progress)
        rate = nsysan.throughput(runs, by=chosen, select=select)
        if result.frame.is_empty():
            return None, result
        if x is None:
            from nsysan.report.sections import scaling_axis

            x = scaling_axis(result.frame) or "depth"
        return plots.scaling(result.frame, rate.frame if not rate.frame.is_empty() else None, x=x), result
    if kind == "compare":
        if baseline is None:
            from nsysan.report.data import auto_baseline

            baseline = auto_baseline(runs, by())
        result = nsysan.compare(runs, by=by(), baseline=baseline, select=select, progress=progress, **stats)
        return (plots.comparison_forest(result.frame) if not result.frame.is_empty() else None), result
    if kind == "numa":
        result = nsysan.numa(runs, select=select, progress=progress, **stats)
        return plots.numa_penalty_heatmap(result, metric=metric), result
    if kind == "bandwidth":
        result = nsysan.bandwidth(runs, by=by(), select=select, progress=progress)
        sizes = nsysan.copy_sizes(runs, by=by(), select=select)
        return (plots.bandwidth_chart(result.frame, sizes.frame if not sizes.frame.is_empty() else None)
                if not result.frame.is_empty() else None), result
    if kind == "busy":
        result = nsysan.utilization(runs, by=by(), window=window or "batches", select=select, progress=progress)
        return (plots.busy_idle(result.frame) if not result.frame.is_empty() else None), result
    if kind == "kernels":
        result = nsysan.top_kernels(runs, by=by(), window=window or "batches", select=select, progress=progress)
        return (plots.top_kernels_chart(result.frame) if not result.frame.is_empty() else None), result
    if kind == "gaps":
        from functools import partial

        from nsysan.analyses.utilization import gpu_utilization

        result = pooled(runs, partial(gpu_utilization, window=window or "batches", select=select), by=(),
                        progress=progress)
        return (plots.idle_gaps(result.frame, by=list(by())) if not result.frame.is_empty() else None), result
    if kind == "timeline":
        first = runs.paths[0]
        result = None
        for attempt in timeline_window(window, select.batches):
            result = nsysan.timeline(first, window=attempt, select=select, progress=progress)
            if not result.frame.is_empty():
                break
        return (plots.gpu_timeline(result.frame) if not result.frame.is_empty() else None), result
    if kind == "skew":
        result = nsysan.collective_calls(runs, select=select, progress=progress)
        if result.frame.is_empty():
            return None, result
        first = result.frame["report"][0]
        return plots.skew_chart(result.frame.filter(pl.col("report") == first)), result
    if kind == "comm":
        result = nsysan.comm(runs, select=select, progress=progress)
        return (plots.comm_overlap_chart(result.frame) if not result.frame.is_empty() else None), result
    raise NsysanError(f"unknown figure {kind!r}; choose from {', '.join(KINDS)}")


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
                fig, result = figure_for(kind, runs, keys=keys_from(by, default=()) or None, select=select,
                                         stats=stats, baseline=_baseline(baseline), window=window, metric=metric,
                                         x=x, progress=progress)
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
