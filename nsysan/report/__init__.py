"""One self-contained HTML report of a study or a set of exports (``nsysan report``).

    from nsysan.report import build_report, render_html, write_report
    page = build_report("outputs/numa_study/2026-11-22/21-25-43")   # a Page: sections, findings, figures, tables
    page.findings                                                    # the sentences computed from the numbers
    write_report(page, "report.html")                                 # or render_html(page) -> str

:mod:`~nsysan.report.data` runs every analysis once over reports opened once; :mod:`~nsysan.report.findings`
and :mod:`~nsysan.report.findings_compare` turn frames into sentences (pure functions, tested on frames with
known answers; :mod:`~nsysan.report.words` says the numbers); :mod:`~nsysan.report.sections` and
:mod:`~nsysan.report.sections_compare` build one section per analysis (:mod:`~nsysan.report.tables`,
:mod:`~nsysan.report.figures` draws the figures in worker processes); :mod:`~nsysan.report.build` assembles the
page; :mod:`~nsysan.report.html` renders it with the package's jinja2 templates. The page needs no network:
figures are embedded, the style sheet is inline, there is no script.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nsysan.report.build import build_report
from nsysan.report.model import Column, Figure, Finding, Page, Section, Table


def render_html(page: Page) -> str:
    """The page as one HTML document (text)."""
    from nsysan.report.html import render_html as render

    return render(page)


def write_report(page: Page, path: str | Path, *, inputs: Any = ()) -> Path:
    """Write the page's HTML to ``path`` atomically (never over an input or an nsys export)."""
    from nsysan.render import write_atomic

    target = Path(path)
    write_atomic(target, render_html(page).encode(), inputs=[Path(p) for p in inputs])
    return target


__all__ = ["Column", "Figure", "Finding", "Page", "Section", "Table", "build_report", "render_html", "write_report"]
