"""The report as data: sections of findings, figures and tables, independent of how it is rendered.

:func:`nsysan.report.build_report` makes a :class:`Page`; :func:`nsysan.report.render_html` turns it into one
self-contained HTML file. Everything a person reads is here as plain values: sentences, table cells already
formatted, figures already encoded, so that a test can check the page's content without a browser.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    """A table column: the frame column it shows, its header and unit (shown as ``header (unit)``)."""

    key: str
    header: str
    unit: str | None = None
    numeric: bool = True

    @property
    def label(self) -> str:
        return f"{self.header} ({self.unit})" if self.unit else self.header


@dataclass
class Table:
    """A table: ``rows`` of formatted cells (strings), one per column; ``id`` is its anchor in the page."""

    id: str
    title: str
    columns: list[Column]
    rows: list[list[str]]
    caption: str = ""
    number: int = 0
    #: Rows to highlight (indices into ``rows``): flagged copies, called changes.
    marked: set[int] = field(default_factory=set)


@dataclass
class Figure:
    """An encoded figure: ``data`` is the SVG text or PNG bytes, ``mime`` says which."""

    id: str
    title: str
    mime: str
    data: bytes
    caption: str = ""
    number: int = 0
    width_px: int = 0
    height_px: int = 0


@dataclass(frozen=True)
class Finding:
    """One plain sentence computed from the numbers, with the figure and table ids that hold its evidence.

    ``level``: ``warn`` (something to fix or look at), ``good`` (works as it should) or ``info``."""

    text: str
    figure: str | None = None
    table: str | None = None
    level: str = "info"
    section: str | None = None


@dataclass
class Section:
    """A part of the page. ``missing`` holds sentences on what could not be computed and why (the section
    is still shown, with them, instead of failing)."""

    id: str
    title: str
    intro: str = ""
    findings: list[Finding] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def short_title(self) -> str:
        """The section's name in a finding's tag: its title up to a colon or "with"."""
        return self.title.split(":")[0].split(" with ")[0]


@dataclass
class Page:
    """The whole report."""

    title: str
    subtitle: str
    generated: str
    sections: list[Section]
    facts: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        """Every finding of every section, in page order (the leading summary repeats them, so it is skipped)."""
        return [f for s in self.sections if s.id != "findings" for f in s.findings]

    @property
    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]

    @property
    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables]

    def section(self, id: str) -> Section | None:  # noqa: A002 - the section's anchor
        return next((s for s in self.sections if s.id == id), None)
