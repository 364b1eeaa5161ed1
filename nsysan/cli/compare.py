"""``nsysan compare`` and ``nsysan numa``: comparisons between groups of runs, with bootstrap CIs."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from nsysan.cli import views
from nsysan.cli.options import (
    By,
    FormatOpt,
    Output,
    Paths,
    Sample,
    analyse,
    keys_from,
    execution_options, selection_options,
    stats_options,
    user_errors,
)
from nsysan.errors import NsysanError

app = typer.Typer()

Metrics = Annotated[Optional[str], typer.Option(
    "--metrics", help="In a table, show only these comma-separated metrics (range_ms, gpu_proj_ms, gpu_busy_ms, "
    "bandwidth_gbps, throughput_per_s). Files always get every metric.")]


def _baseline(text: str | None) -> dict[str, Any] | None:
    """``numa=0,variant=`` -> {"numa": "0", "variant": ""} (values are matched as text)."""
    if not text:
        return None
    spec = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise NsysanError(f"--baseline takes key=value pairs separated by commas (e.g. numa=0), not {text!r}")
        spec[key.strip()] = value.strip()
    return spec


def _interval(stats: dict[str, Any]) -> str:
    held = "simultaneous per comparison" if stats["adjust"] == "bonferroni" else "per row"
    return f"{100 * stats['confidence']:g} % bootstrap CI, {held}"


def _only(metrics: str | None, fmt: str | None, call: Any) -> Any:
    """``call`` with its frame cut to ``metrics`` for a table (files keep every metric)."""
    if not metrics:
        return call
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]

    def cut(runs: Any, progress: Any) -> Any:
        import polars as pl

        result = call(runs, progress)
        if (fmt or "table") != "table" or result.frame.is_empty():
            return result
        return result.with_frame(result.frame.filter(pl.col("metric").is_in(wanted)))

    return cut


@app.command()
@stats_options
@selection_options
@execution_options
def compare(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="The baseline group as key=value pairs of --by keys, e.g. numa=0 (each group is compared "
        "with the group that differs only in these keys; an empty value matches a missing one, e.g. variant=). "
        "Default: the first group.")] = None,
    metrics: Metrics = None,
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
    stats: object = None,
) -> None:
    """Compare groups of runs per stage: value, ratio to the baseline, bootstrap CI and a verdict.

    Groups are reports (default) or --by keys; instances of a group's reports are pooled. The verdict is
    slower/faster only when the whole CI lies beyond --min-effect, else "no clear change".
    Definitions: docs/metrics.md, "Comparisons".

    Example: nsysan compare outputs/ --by model,numa --baseline numa=0

    Example: nsysan compare eager.sqlite compiled.sqlite
    """
    import nsysan

    keys = keys_from(by)
    with user_errors():
        spec = _baseline(baseline)
    call = _only(metrics, fmt, lambda runs, progress: nsysan.compare(runs, by=keys, baseline=spec, select=select,
                                                                     progress=progress, **stats))
    analyse(call, views.COMPARE, paths=paths, sample=sample, fmt=fmt, output=output, keys=keys,
            baseline=lambda frame: frame["baseline"].drop_nulls().first(), interval=_interval(stats),
            min_effect=stats["min_effect_pct"])


@app.command()
@stats_options
@selection_options
@execution_options
def numa(
    paths: Paths = None,
    sample: Sample = False,
    local_key: Annotated[str, typer.Option(
        help="Run-metadata key holding the GPU's NUMA node (the local node).")] = "gpu_numa_node",
    ignore: Annotated[Optional[str], typer.Option(
        "--ignore", help="Comma-separated metadata keys that may differ between paired runs (e.g. a "
        "timestamp).")] = None,
    heatmap: Annotated[bool, typer.Option(
        "--heatmap", help="Output model x stage penalties of one --metric/--statistic, ready for a heatmap.")] = False,
    metric: Annotated[str, typer.Option(help="Metric for --heatmap.")] = "range_ms",
    statistic: Annotated[str, typer.Option(help="Statistic for --heatmap: mean or p95.")] = "mean",
    metrics: Metrics = None,
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
    stats: object = None,
) -> None:
    """NUMA penalty per model and stage: remote node / local node - 1, with bootstrap CIs.

    Runs that share every metadata key but the NUMA node are paired; the local node is the GPU's NUMA node
    from the run metadata (sidecar gpu_numa_node), else the lowest node of the group (said on stderr).
    Most NUMA-sensitive models first. When every run shared one node, a sentence says that no remote-node
    penalty can be shown. Definitions: docs/metrics.md, "NUMA penalty".

    Example: nsysan numa outputs/numa_study

    Example: nsysan numa outputs/numa_study --heatmap --metric gpu_proj_ms -o heat.csv
    """
    import nsysan

    ignored = [k.strip() for k in (ignore or "").split(",") if k.strip()]

    def penalty(runs: Any, progress: Any) -> Any:
        result = nsysan.numa(runs, local_key=local_key, ignore=ignored, select=select, progress=progress, **stats)
        if heatmap and not result.frame.is_empty():
            return result.with_frame(nsysan.numa_heatmap(result, metric=metric, statistic=statistic))
        return result

    view = views.NUMA_HEATMAP if heatmap else views.NUMA
    analyse(_only(None if heatmap else metrics, fmt, penalty), view, paths=paths, sample=sample, fmt=fmt,
            output=output, interval=_interval(stats), metric=metric, statistic=statistic)
