"""The report's page, built from one :class:`~nsysan.report.data.Analyses`: the findings summary, one section per
analysis (:mod:`~nsysan.report.sections`, :mod:`~nsysan.report.sections_compare`), figure and table numbers, the
title and the facts. Each section is built as soon as the analyses it reads are done, so that worker processes
draw its figures (:mod:`~nsysan.report.figures`) while the later analyses run.
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import Any

import nsysan
from nsysan.report.data import Analyses, analyse
from nsysan.report.figures import Figures
from nsysan.report.model import Page, Section
from nsysan.report.sections import (
    bandwidth_section,
    flags_section,
    kernels_section,
    notes_section,
    runs_section,
    stages_section,
    throughput_section,
    timeline_section,
    utilization_section,
)
from nsysan.report.sections_compare import (
    compare_section,
    distributed_section,
    numa_section,
)
from nsysan.selection import DEFAULT, Selection

#: The page's sections in page order, each with the phase of the analyses (:data:`nsysan.report.data.PHASES`)
#: after which it can be built (``"end"``: after every phase).
SECTIONS: tuple[tuple[str, Callable[[Analyses, Figures], Section | None]], ...] = (
    ("info", lambda found, draw: runs_section(found)),
    ("latency", stages_section),
    ("throughput", throughput_section),
    ("bandwidth", bandwidth_section),
    ("utilization", lambda found, draw: flags_section(found)),
    ("utilization", utilization_section),
    ("utilization", kernels_section),
    ("compare", compare_section),
    ("numa", numa_section),
    ("distributed", lambda found, draw: distributed_section(found, draw) if found.distributed else None),
    ("timeline", timeline_section),
    ("end", lambda found, draw: notes_section(found)),
)


def build_report(runs: Any, *, by: Sequence[str] | None = None, select: Selection = DEFAULT,
                 baseline: dict[str, Any] | None = None, attribution: str = "auto",
                 stats: dict[str, Any] | None = None, title: str | None = None, figures: str = "svg",
                 inputs: Sequence[Any] = (), step: Callable[[str], None] | None = None,
                 workers: int | None = None) -> Page:
    """The report of ``runs`` (paths, folders, a study folder, or a :class:`~nsysan.collection.Collection`) as a
    :class:`~nsysan.report.model.Page`: what was run, findings, and one section per analysis.

    ``by``: grouping keys (default: ``model`` and the metadata keys that vary, else ``report``); ``baseline``:
    the comparison's baseline group as in :func:`nsysan.compare` (default: each model's variants against the
    run without a variant); ``attribution``: as in :func:`nsysan.latency`, or ``auto`` (``thread``, nsys's rule, unless other threads
    launched some ranges' GPU work: then ``process``); ``stats``: options of
    :func:`nsysan.compare` (confidence, resamples, seed, min_effect_pct, adjust, block); ``figures``:
    ``svg`` or ``png``; ``workers``: processes that draw the figures (default two where there are two cores,
    0: in this process); ``inputs``: the paths the user gave (where study records are looked for; default the
    runs' own paths)."""
    from pathlib import Path

    given = [Path(p) for p in inputs] or ([Path(runs)] if isinstance(runs, (str, Path)) else
                                          [Path(p) for p in runs] if isinstance(runs, (list, tuple)) else [])
    draw = Figures(figures, workers=workers)  # workers start importing matplotlib while the analyses run
    built: dict[int, Section | None] = {}

    def ready(found: Analyses, phase: str) -> None:
        for i, (after, make) in enumerate(SECTIONS):
            if after == phase:
                built[i] = make(found, draw)

    try:
        found = analyse(runs, inputs=given, by=by, select=select, attribution=attribution, baseline=baseline,
                        stats=stats, step=step, ready=ready)
        ready(found, "end")
        sections = [built[i] for i in sorted(built) if built[i] is not None]
        if step:
            step("figures")
        failed = draw.finish()
    finally:
        draw.close()
    for section in sections:  # a finding never points to a figure that could not be drawn
        section.findings = [dataclasses.replace(f, figure=None) if f.figure in failed else f for f in section.findings]
    _number(sections)
    summary = Section("findings", "Findings", intro="Computed from the numbers below; each points to its evidence.")
    summary.findings = [f for s in sections for f in s.findings]
    if not summary.findings:
        summary.missing.append("Nothing could be computed from these inputs (see What was run).")
    return Page(title=title or _title(found), subtitle=_subtitle(found),
                generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                sections=[summary, *sections], facts=_facts(found),
                meta={"seconds": {k: round(v.seconds, 3) for k, v in found.outcomes.items()},
                      "unreadable": list(found.unreadable), "exports": len(found.collection)})


def _number(sections: list[Section]) -> None:
    figure = table_no = 0
    for section in sections:
        for f in section.figures:
            figure += 1
            f.number = figure
        for t in section.tables:
            table_no += 1
            t.number = table_no


def _title(found: Analyses) -> str:
    experiments = [s.experiment for s in found.studies.records if s.experiment]
    if experiments:
        return f"nsysan report: {', '.join(dict.fromkeys(experiments))}"
    if len(found.collection) == 1:
        return f"nsysan report: {found.collection.names[found.collection.paths[0]]}"
    return f"nsysan report: {len(found.collection)} exports"


def _subtitle(found: Analyses) -> str:
    n = len(found.collection)
    text = f"{found.analysed} of {n} export(s) analysed" if found.unreadable else f"{n} export(s)"
    return f"{text}, grouped by {', '.join(found.by)}; {found.select.describe()}"


def _facts(found: Analyses) -> list[tuple[str, str]]:
    facts = [("Exports", f"{len(found.collection)} ({found.analysed} analysed)"),
             ("Grouped by", ", ".join(found.by)), ("Instances", found.select.describe()),
             ("GPU time attribution", found.attribution)]
    info = found["info"].frame
    if not info.is_empty():
        facts.append(("nsys (exports)", ", ".join(sorted(set(info["nsys_version"].drop_nulls().to_list()))) or "—"))
    facts.append(("nsysan", nsysan.__version__))
    return facts


__all__ = ["build_report"]
