"""Every analysis a report shows, computed once over reports opened once.

:func:`analyse` opens each export a single time and passes the open reports to every analysis of
:mod:`nsysan.api`, so tables an analysis derives from a report (range nesting, launches, attribution) are
read once for the whole report (:func:`nsysan.load.derived`). An analysis that fails as a whole
(:class:`~nsysan.errors.NsysanError`) becomes a sentence of the section that needed it, never a crash;
reports that cannot be read are listed, and the others are analysed.
"""
from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

import nsysan
from nsysan.collection import Collection, Failure
from nsysan.engine import Result, pooled
from nsysan.errors import NsysanError
from nsysan.report.study import Studies, find_studies
from nsysan.selection import DEFAULT, Selection

#: Grouping keys a report picks by itself, when every report has a model: those of them that vary.
AUTO_KEYS = ("model", "variant", "gpu", "numa")
#: The groups of analyses, in the order they run; ``analyse(ready=...)`` is told as each group is done, so that
#: the report can build a section (and start drawing its figures) while the later analyses run.
PHASES = ("info", "latency", "throughput", "bandwidth", "utilization", "compare", "numa", "timeline", "distributed")
#: The analyses each phase runs (those that do not apply to the inputs get an outcome that says so).
ANALYSES = {
    "info": ("info",), "latency": ("trace", "latency"), "throughput": ("throughput",),
    "bandwidth": ("copies", "bandwidth", "bandwidth_stage", "copy_sizes"),
    "utilization": ("utilization_parts", "utilization", "top_kernels", "utilization_forward"),
    "compare": ("compare",), "numa": ("numa",), "timeline": ("timeline",),
    "distributed": ("dist_latency", "dist_utilization", "comm", "skew", "skew_steps", "calls"),
}
Step = Callable[[str], None] | None


@dataclass
class Outcome:
    """One analysis: its :class:`~nsysan.engine.Result`, or why it could not run at all."""

    result: Result | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def frame(self) -> pl.DataFrame:
        return self.result.frame if self.result is not None else pl.DataFrame()

    @property
    def notes(self) -> tuple[str, ...]:
        return self.result.notes if self.result is not None else ()

    @property
    def failures(self) -> tuple[Failure, ...]:
        return self.result.failures if self.result is not None else ()

    def missing(self, what: str) -> list[str]:
        """Sentences on what this analysis could not give: the error, or the reports it left out."""
        if self.error:
            return [f"{what} could not be computed: {self.error}"]
        return [f"{what}: left out {f.reason}" for f in self.failures]


@dataclass
class Analyses:
    """The inputs of one report and every analysis over them."""

    inputs: list[Path]
    collection: Collection
    unreadable: list[Failure]
    studies: Studies
    by: tuple[str, ...]
    select: Selection
    attribution: str
    baseline: dict[str, Any] | None
    batch: str | None = None
    batch_glob: str | None = None
    stages: list[str] = field(default_factory=list)
    ranks: int = 1
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    timeline_report: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Phases done so far (all of :data:`PHASES` once :func:`analyse` returns).
    done: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Outcome:
        """The outcome of analysis ``name``; reading one whose phase has not run yet is a bug of the caller
        (a section built too early), never an empty section."""
        if name in self.outcomes:
            return self.outcomes[name]
        phase = next((p for p, names in ANALYSES.items() if name in names), None)
        if phase is not None and phase not in self.done:
            raise RuntimeError(f"the {name!r} analysis was read before its phase {phase!r} ran")
        return Outcome(error="not computed")

    @property
    def analysed(self) -> int:
        return len(self.collection) - len(self.unreadable)

    @property
    def distributed(self) -> bool:
        return self.ranks > 1


def auto_by(collection: Collection) -> tuple[str, ...]:
    """``model`` and those of ``variant``, ``gpu``, ``numa`` that vary, when every report has a model (the
    runner's file names and sidecars give one); else ``report``."""
    metas = [m for m in collection.metadata.values() if isinstance(m, dict)]
    if not metas or any(m.get("model") is None for m in metas):
        return ("report",)
    keys = ["model"]
    for key in AUTO_KEYS[1:]:
        values = {str(m.get(key)) for m in metas}
        if len(values) > 1 or (key == "variant" and values != {"None"}):
            keys.append(key)
    return tuple(keys)


def auto_baseline(collection: Collection, by: Sequence[str]) -> dict[str, Any] | None:
    """The comparison a study of variants asks for: each variant of a model against its baseline variant (no
    variant, else the first in name order); else the first other key (not ``numa``: the NUMA section compares
    nodes) that varies within a model, against its lowest value. None when no such key varies."""
    metas = [m for m in collection.metadata.values() if isinstance(m, dict)]
    for key in [k for k in by if k not in ("model", "report", "numa")]:
        per_model: dict[Any, set[str]] = {}
        for m in metas:
            per_model.setdefault(m.get("model"), set()).add("" if m.get(key) is None else str(m.get(key)))
        if any(len(v) > 1 for v in per_model.values()):
            values = sorted(set().union(*per_model.values()))
            return {key: "" if "" in values else values[0]}
    return None


def _run(name: str, call: Callable[[], Result], outcomes: dict[str, Outcome], step: Step) -> Outcome:
    if step:
        step(name)
    started = time.perf_counter()
    try:
        outcome = Outcome(call())
    except (NsysanError, ValueError) as e:
        outcome = Outcome(error=str(e))
    except Exception as e:  # noqa: BLE001 - a bug in one analysis must not cost the whole report
        first = (str(e).strip().splitlines() or [""])[0]
        outcome = Outcome(error=f"{type(e).__name__}: {first} (an nsysan error; please report it)")
    outcome.seconds = time.perf_counter() - started
    outcomes[name] = outcome
    return outcome


def _batch_names(trace: pl.DataFrame, patterns: Sequence[str]) -> tuple[str | None, str | None]:
    """(the batch range's name in statistics, e.g. ``batch_*``; the glob that finds it) from the trace's
    top-level ranges."""
    tops = trace.filter(pl.col("level") == 0)["range"].unique().to_list() if not trace.is_empty() else []
    for glob in patterns:
        if any(fnmatch.fnmatchcase(name, glob) for name in tops):
            return glob, glob
    return None, None


def analyse(runs: Any, *, inputs: Sequence[Path] = (), by: Sequence[str] | None = None,
            select: Selection = DEFAULT, attribution: str = "auto", baseline: Mapping[str, Any] | None = None,
            stats: Mapping[str, Any] | None = None, step: Step = None,
            ready: Callable[[Analyses, str], None] | None = None) -> Analyses:
    """Open every report of ``runs`` once and run every analysis the report shows (``step`` is called with
    each analysis's name as it starts, for a progress display; ``ready`` with the analyses so far and each of
    :data:`PHASES` once its analyses are done)."""
    collection = runs if isinstance(runs, Collection) else nsysan.collect(
        [runs] if isinstance(runs, (str, Path)) else list(runs))
    stats = dict(stats or {})
    opened, unreadable = [], []
    for path in collection.paths:
        meta = collection.metadata[path]
        if isinstance(meta, Failure):
            unreadable.append(meta)
            continue
        try:
            opened.append(nsysan.open(path))
        except NsysanError as e:
            unreadable.append(Failure(path, str(e)))
    chosen_by = tuple(by) if by else auto_by(collection)
    found = Analyses(inputs=[Path(p) for p in (inputs or collection.paths)], collection=collection,
                     unreadable=unreadable, studies=find_studies(list(inputs) or list(collection.paths),
                                                                  collection.paths),
                     by=chosen_by, select=select, attribution=attribution,
                     baseline=dict(baseline) if baseline is not None else auto_baseline(collection, chosen_by))

    def phase_done(phase: str) -> None:
        for name in ANALYSES[phase]:  # an analysis that does not apply says so
            found.outcomes.setdefault(name, Outcome(error="not computed"))
        found.done.append(phase)
        if ready:
            ready(found, phase)

    try:
        _analyse_all(found, opened, stats, step, phase_done)
    finally:
        for report in opened:
            report.close()
    return found


def _analyse_all(found: Analyses, reports: list, stats: dict[str, Any], step: Step,
                 phase_done: Callable[[str], None]) -> None:
    out, by, select = found.outcomes, found.by, found.select
    if not reports:
        found.notes.append("no export could be read: nothing to analyse")
        for phase in PHASES:
            phase_done(phase)
        return
    run = partial(_run, outcomes=out, step=step)
    run("info", lambda: nsysan.info(reports))
    phase_done("info")
    if found.attribution == "auto":  # nsys's rule unless the analysis finds ranges whose GPU work other threads launched
        found.attribution = "thread"
        trace = run("trace", lambda: nsysan.latency_trace(reports, select=select, attribution="thread"))
        if any("attribution='process'" in note for note in trace.notes):
            found.attribution = "process"
            found.notes.append("GPU time per range counts the work of every thread of the range's process "
                               "(attribution=process): other threads launched the GPU work of some ranges (PyTorch's "
                               "autograd thread in backward).")
            trace = run("trace", lambda: nsysan.latency_trace(reports, select=select, attribution="process"))
    else:
        trace = run("trace", lambda: nsysan.latency_trace(reports, select=select, attribution=found.attribution))
    found.batch, found.batch_glob = _batch_names(trace.frame, select.batches)
    from nsysan.report.findings import batch_stages

    found.stages = batch_stages(trace.frame, select.batches)
    if not trace.frame.is_empty() and "rank" in trace.frame.columns:
        found.ranks = int(trace.frame.group_by("report").agg(pl.col("rank").n_unique())["rank"].max() or 1)
    run("latency", lambda: nsysan.latency(reports, by=by, select=select, attribution=found.attribution))
    phase_done("latency")
    run("throughput", lambda: nsysan.throughput(reports, by=by, select=select))
    phase_done("throughput")
    copies = run("copies", lambda: pooled(reports, partial(_copy_trace, select=select), by=()))
    run("bandwidth", lambda: _pool(copies, lambda f: _bw().bandwidth_summary(f, by=by, select=select)))
    run("bandwidth_stage", lambda: nsysan.bandwidth(reports, by=by, by_stage=True, select=select))
    run("copy_sizes", lambda: _pool(copies, lambda f: _bw().copy_size_histogram(f, by=by, select=select)))
    phase_done("bandwidth")
    window = "batches" if found.batch else "capture"
    parts = run("utilization_parts", lambda: pooled(reports, partial(_gpu_utilization, window=window, select=select),
                                                    by=()))
    run("utilization", lambda: _pool(parts, lambda f: _ut().utilization_summary(f, by=by)))
    run("top_kernels", lambda: _pool(parts, lambda f: _ut().top_kernels(f, by=by, top=8)))
    if "forward" in found.stages:
        run("utilization_forward", lambda: nsysan.utilization(reports, by=by, window="forward", select=select))
    phase_done("utilization")
    run("compare", lambda: nsysan.compare(reports, by=by, baseline=found.baseline, select=select, **stats)
        if found.baseline else Result(pl.DataFrame()))
    phase_done("compare")
    run("numa", lambda: nsysan.numa(reports, select=select, **stats))
    phase_done("numa")
    _timeline(found, reports, run)
    phase_done("timeline")
    if found.distributed:
        dist_by = tuple(dict.fromkeys([*(k for k in by if k != "rank"), "rank"]))
        run("dist_latency", lambda: nsysan.latency(reports, by=dist_by, select=select, attribution="process"))
        run("dist_utilization", lambda: nsysan.utilization(reports, by=dist_by, window=window, select=select))
        run("comm", lambda: nsysan.comm(reports, select=select))
        run("skew", lambda: nsysan.skew(reports, select=select))
        run("skew_steps", lambda: nsysan.skew(reports, per_step=True, select=select))
        run("calls", lambda: nsysan.collective_calls(reports, select=select))
    phase_done("distributed")


def _timeline(found: Analyses, reports: list, run: Callable[..., Outcome]) -> None:
    """One report's timeline: the report with the most kernels, three measured batches (two per rank in a
    distributed report)."""
    info = found["info"].frame
    if info.is_empty():
        return
    chosen = info.sort("kernels", descending=True, maintain_order=True)["report"][0]
    found.timeline_report = chosen
    report = next(r for r in reports if found.collection.names.get(r.path) == chosen)
    count = 2 if found.distributed else 3  # the timeline's count is per rank
    window: Any = (found.batch_glob, count) if found.batch_glob else "capture"
    run("timeline", lambda: nsysan.timeline(report, window=window, select=found.select))


def _pool(parts: Outcome, pool: Callable[[pl.DataFrame], pl.DataFrame]) -> Result:
    if parts.result is None:
        raise NsysanError(parts.error or "no data")
    frame = parts.result.frame
    return parts.result.with_frame(pool(frame) if not frame.is_empty() else frame)


def _bw() -> Any:
    from nsysan.analyses import bandwidth

    return bandwidth


def _ut() -> Any:
    from nsysan.analyses import utilization

    return utilization


def _copy_trace(report: Any, *, select: Selection) -> pl.DataFrame:
    return _bw().copy_trace(report, include_memset=True, by_stage=False, select=select)


def _gpu_utilization(report: Any, *, window: str, select: Selection) -> pl.DataFrame:
    return _ut().gpu_utilization(report, window=window, select=select, names="short")
