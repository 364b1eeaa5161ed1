"""A :class:`~nsysan.report.model.Page` as one self-contained HTML file: jinja2 templates shipped with the
package (``templates/``), the style sheet inlined, figures embedded as ``data:`` URLs, no script and nothing
fetched from anywhere, so the file renders offline and can be mailed as it is. Every text is escaped."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from nsysan.report.figures import data_url
from nsysan.report.model import Finding, Page


@lru_cache(maxsize=1)
def environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("nsysan.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["data_url"] = data_url
    return env


def _refs(page: Page) -> dict[str, str]:
    """Anchor id -> "Figure 3" / "Table 5", for the findings' links."""
    names = {f.id: f"Figure {f.number}" for f in page.figures}
    names.update({t.id: f"Table {t.number}" for t in page.tables})
    return names


def render_html(page: Page) -> str:
    """The page as HTML text."""
    template = environment().get_template("report.html.j2")
    refs = _refs(page)

    def links(finding: Finding) -> list[tuple[str, str]]:
        return [(ref, refs[ref]) for ref in (finding.figure, finding.table) if ref and ref in refs]

    titles = {s.id: s.short_title for s in page.sections}
    return template.render(page=page, links=links, titles=titles, css=environment().loader.get_source(environment(),
                                                                                         "report.css")[0])
