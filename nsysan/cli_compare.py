"""``nsysan compare`` and ``nsysan numa``: comparisons between groups of runs, with bootstrap CIs.

The commands live on a local :data:`app` so that they can be tested on their own; ``nsysan.cli``
registers them on the main app (``app.command()(compare)``, ``app.command()(numa)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import polars as pl
import typer

from nsysan.analyses.compare import stage_samples
from nsysan.analyses.compare import compare as compare_groups
from nsysan.analyses.numa import ASSUMED_LOWEST, LOCAL_KEY, NumaNotComparable, numa_heatmap, numa_pairs, numa_penalty
from nsysan.cli_common import (By, FormatOpt, Output, Paths, Sample, finish, keys_from, message, progress_bar,
                               runs_from, user_errors)
from nsysan.errors import NsysanError
from nsysan.render import emit, infer_format

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Comparisons between groups of runs: nsysan compare, nsysan numa.")

ExcludeWithin = Annotated[Optional[list[str]], typer.Option(
    "--exclude-within", help="Drop instances inside (or named like) ranges matching this glob, e.g. 'warmup_*'. "
    "Repeatable.")]
SkipFirst = Annotated[int, typer.Option(help="Drop the first N instances of every range name.", min=0)]
MergeNumbered = Annotated[bool, typer.Option(
    "--merge-numbered/--no-merge-numbered", help="Compare numbered ranges together: batch_7 and batch_8 become "
    "batch_*.")]
Confidence = Annotated[float, typer.Option(help="Confidence of the bootstrap intervals.", min=0.5, max=0.999)]
Resamples = Annotated[int, typer.Option(help="Bootstrap resamples (more are drawn when an interval's tails "
                                        "need them).", min=100)]
Seed = Annotated[int, typer.Option(help="Seed of the bootstrap: the same seed gives the same intervals.")]
MinEffect = Annotated[float, typer.Option(
    "--min-effect", help="Smallest change, in %, that a verdict calls slower/faster: the interval must lie "
    "wholly beyond it.", min=0)]
Adjust = Annotated[str, typer.Option(
    help="bonferroni: the intervals of one comparison hold together at --confidence; none: each on its own.")]
Block = Annotated[str, typer.Option(
    help="Bootstrap block length in instances: auto (n^1/3; keeps bursts of slow batches together) or N "
    "(1 = independent instances).")]
Metrics = Annotated[Optional[str], typer.Option(
    "--metrics", help="In a table, show only these comma-separated metrics (range_ms, gpu_proj_ms, gpu_busy_ms, "
    "bandwidth_gbps, throughput_per_s). Files always get every metric.")]

COMPARE_TABLE = ("stage", "direction", "metric", "statistic", "n", "value", "ratio", "ci_low", "ci_high", "verdict")
NUMA_TABLE = ("local_numa", "remote_numa", "stage", "direction", "metric", "statistic", "local_value",
              "remote_value", "penalty_pct", "ci_low_pct", "ci_high_pct", "verdict")


def _block(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise NsysanError(f"--block must be auto or a positive integer, not {text!r}")
    return value


def _adjust(text: str) -> str:
    if text not in ("bonferroni", "none"):
        raise NsysanError(f"--adjust must be bonferroni or none, not {text!r}")
    return text


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


def _only_metrics(result: pl.DataFrame, metrics: str | None, chosen: str) -> pl.DataFrame:
    if not metrics or chosen != "table":
        return result
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    return result.filter(pl.col("metric").is_in(wanted))


@app.command()
def compare(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="The baseline group as key=value pairs of --by keys, e.g. numa=0 (each group is compared "
        "with the group that differs only in these keys; an empty value matches a missing one, e.g. variant=). "
        "Default: the first group.")] = None,
    exclude_within: ExcludeWithin = None,
    skip_first: SkipFirst = 0,
    merge_numbered: MergeNumbered = True,
    confidence: Confidence = 0.95,
    resamples: Resamples = 2000,
    seed: Seed = 0,
    min_effect: MinEffect = 5.0,
    adjust: Adjust = "bonferroni",
    block: Block = "auto",
    metrics: Metrics = None,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """Compare groups of runs per stage: value, ratio to the baseline, bootstrap CI and a verdict.

    Groups are reports (default) or --by metadata keys; instances of a group's reports are pooled. The
    verdict is slower/faster only when the whole CI lies beyond --min-effect, else "no clear change".
    Definitions: docs/metrics.md, "Comparisons".

    Example: nsysan compare outputs/ --by model,numa --baseline numa=0 --exclude-within 'warmup_*'

    Example: nsysan compare eager.sqlite compiled.sqlite --exclude-within 'warmup_*'
    """
    with user_errors():
        runs = runs_from(paths, sample, output)
        keys = list(keys_from(by, ("report",)))
        chosen = infer_format(fmt, output)
        spec = _baseline(baseline)
        with progress_bar(len(runs.paths)) as progress:
            samples = stage_samples(runs, exclude_within=exclude_within, skip_first=skip_first,
                                    merge_numbered=merge_numbered, progress=progress)
        result = pl.DataFrame()
        if not samples.is_empty():
            result = compare_groups(samples, by=keys, baseline=spec, confidence=confidence, resamples=resamples,
                                    seed=seed, block=_block(block), adjust=_adjust(adjust),  # type: ignore[arg-type]
                                    min_effect_pct=min_effect)
            groups = samples.select(keys).unique().height
            if groups < 2:
                message(f"nsysan: only one group ({', '.join(keys)}): nothing to compare with")
            shown = _only_metrics(result, metrics, chosen)
            base = result["baseline"].drop_nulls().first() if result.height else None
            title = (f"Ratio to baseline {base} ({_interval(confidence, adjust)}; a verdict needs a change beyond "
                     f"{min_effect:g} %)")
            emit(shown, chosen, output, title=title, table_columns=(*keys, *COMPARE_TABLE))
        finish(runs, analysed=not result.is_empty())


@app.command()
def numa(
    paths: Paths = None,
    sample: Sample = False,
    exclude_within: ExcludeWithin = None,
    skip_first: SkipFirst = 0,
    merge_numbered: MergeNumbered = True,
    local_key: Annotated[str, typer.Option(
        help="Run-metadata key holding the GPU's NUMA node (the local node).")] = LOCAL_KEY,
    ignore: Annotated[Optional[str], typer.Option(
        "--ignore", help="Comma-separated metadata keys that may differ between paired runs (e.g. a "
        "timestamp).")] = None,
    heatmap: Annotated[bool, typer.Option(
        "--heatmap", help="Output model x stage penalties of one --metric/--statistic, ready for a heatmap.")] = False,
    metric: Annotated[str, typer.Option(help="Metric for --heatmap.")] = "range_ms",
    statistic: Annotated[str, typer.Option(help="Statistic for --heatmap: mean or p95.")] = "mean",
    confidence: Confidence = 0.95,
    resamples: Resamples = 2000,
    seed: Seed = 0,
    min_effect: MinEffect = 5.0,
    adjust: Adjust = "bonferroni",
    block: Block = "auto",
    metrics: Metrics = None,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """NUMA penalty per model and stage: remote node / local node - 1, with bootstrap CIs.

    Runs that share every metadata key but the NUMA node are paired; the local node is the GPU's NUMA node
    from the run metadata (sidecar gpu_numa_node), else the lowest node of the group (said on stderr).
    Most NUMA-sensitive models first. Definitions: docs/metrics.md, "NUMA penalty".

    Example: nsysan numa outputs/numa_study --exclude-within 'warmup_*'

    Example: nsysan numa outputs/numa_study --exclude-within 'warmup_*' --heatmap --metric gpu_proj_ms -o heat.csv
    """
    with user_errors():
        runs = runs_from(paths, sample, output)
        chosen = infer_format(fmt, output)
        ignored = [k.strip() for k in (ignore or "").split(",") if k.strip()]
        with progress_bar(len(runs.paths)) as progress:
            samples = stage_samples(runs, exclude_within=exclude_within, skip_first=skip_first,
                                    merge_numbered=merge_numbered, progress=progress)
        result = pl.DataFrame()
        if not samples.is_empty():
            try:
                result = numa_penalty(samples, local_key=local_key, ignore=ignored, confidence=confidence,
                                      resamples=resamples, seed=seed, block=_block(block),  # type: ignore[arg-type]
                                      adjust=_adjust(adjust), min_effect_pct=min_effect)  # type: ignore[arg-type]
            except NumaNotComparable as e:
                _say(f"nsysan: {e}.", chosen, output)
                finish(runs, analysed=True)
                return
            _notes(samples, local_key, ignored)
            keys = [c for c in result.columns[:result.columns.index("local_numa")]
                    if c == "model" or result[c].n_unique() > 1]
            if heatmap:
                frame = numa_heatmap(result, metric=metric, statistic=statistic)
                emit(frame, chosen, output, title=f"NUMA penalty (%) of {metric} {statistic}, most sensitive first",
                     table_columns=(*keys, *frame.columns[frame.columns.index("remote_numa"):]))
            else:
                emit(_only_metrics(result, metrics, chosen), chosen, output,
                     title=f"NUMA penalty: remote / local - 1 ({_interval(confidence, adjust)}), most sensitive first",
                     table_columns=(*keys, *NUMA_TABLE))
        finish(runs, analysed=not result.is_empty())


def _interval(confidence: float, adjust: str) -> str:
    held = "simultaneous per comparison" if adjust == "bonferroni" else "per row"
    return f"{100 * confidence:g} % bootstrap CI, {held}"


def _say(text: str, chosen: str, output: Path | None) -> None:
    """A plain answer in place of a table: on stdout for a table on the terminal, else on stderr (so that a
    CSV/JSON stream stays clean)."""
    if chosen == "table" and output is None:
        typer.echo(text)
    else:
        message(text)


def _notes(samples: pl.DataFrame, local_key: str, ignored: list[str]) -> None:
    """Say on stderr which assumption picked the local node and which reports found no partner."""
    layout = numa_pairs(samples, local_key=local_key, ignore=ignored)
    if (layout["local_basis"] == ASSUMED_LOWEST).any():
        message(f"nsysan: no {local_key} in the run metadata of some groups: the lowest NUMA node of each "
                 "such group is taken as local (see the local_basis column)")
    for report, note in layout.filter(pl.col("role") == "unpaired").select("report", "note").iter_rows():
        message(f"nsysan: {report} not paired: {note}")
