"""Cells and tables of the report: values as the page shows them, frames as :class:`~nsysan.report.model.Table`."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from nsysan.render import format_number
from nsysan.report.model import Column, Table


def cell(value: Any) -> str:
    """A table cell as text: numbers with the digits that matter, integers with thousands separators,
    yes/no, and an em dash for a missing value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.0f}" if abs(value) >= 1000 else format_number(value)
    return " ".join(str(value).split())


def table(id: str, title: str, frame: pl.DataFrame, columns: Sequence[Column], *, caption: str = "",  # noqa: A002
          marked: Callable[[dict[str, Any]], bool] | None = None, limit: int = 400) -> Table:
    """``frame``'s ``columns`` (those it has) as a :class:`Table`; at most ``limit`` rows (the caption says
    when rows were left out)."""
    shown = [c for c in columns if c.key in frame.columns]
    rows, flagged = [], set()
    for i, row in enumerate(frame.head(limit).iter_rows(named=True)):
        rows.append([cell(row[c.key]) for c in shown])
        if marked and marked(row):
            flagged.add(i)
    if frame.height > limit:
        caption = (caption + " " if caption else "") + f"First {limit} of {frame.height:,} rows."
    return Table(id=id, title=title, columns=list(shown), rows=rows, caption=caption, marked=flagged)


def key_columns(keys: Sequence[str]) -> list[Column]:
    return [Column(k, k.replace("_", " "), numeric=False) for k in keys]


__all__ = ["cell", "key_columns", "table"]
