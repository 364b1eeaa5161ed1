"""Write results as a terminal table, CSV, JSON or Parquet, to stdout or atomically to a file.

Tables are for people: they fit the terminal (the least important columns are left out, with a note, and long
names are shortened with an ellipsis; a header may take two lines, a cell never wraps), numbers keep the
digits that matter (µs-scale kernels read 0.00312 ms, not 0.003), and names are printed as written, never
read as markup. Files (csv, json, parquet) keep every column in full.
"""
from __future__ import annotations

import io
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsysan.errors import NsysanError
from nsysan.files import UnreadableFile, read_head, resolved
from nsysan.host import write_atomic as _write_file

if TYPE_CHECKING:  # polars is needed only by whoever hands us a frame: the runner renders rows without it
    import polars as pl

FORMATS: tuple[str, ...] = ("table", "csv", "json", "parquet")
_BY_SUFFIX = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".txt": "table"}
#: Text wider than this (names, flags, notes) may be shortened to it; shorter text (kinds, verdicts) never is.
MIN_TEXT_WIDTH = 20
#: Long text keeps this width while optional columns can be left out instead.
COMFORTABLE_TEXT_WIDTH = 36
#: First bytes of the files nsysan must never overwrite: nsys exports (SQLite) and nsys reports.
_PROTECTED_MAGIC = (b"SQLite format 3\x00", b"NVIDIA Tegra Profiler Report")


def infer_format(requested: str | None, output: Path | None) -> str:
    """``--format`` if given, else the output file's extension, else a table."""
    if requested:
        if requested not in FORMATS:
            raise NsysanError(f"unknown format {requested!r}; choose from {', '.join(FORMATS)}")
        return requested
    if output is not None and output.suffix.lower() in _BY_SUFFIX:
        return _BY_SUFFIX[output.suffix.lower()]
    return "table"


def to_bytes(frame: pl.DataFrame, fmt: str, *, title: str = "", columns: Sequence[str] | None = None,
             drop_first: Sequence[str] = (), width: int = 100) -> bytes:
    if fmt == "csv":
        return frame.write_csv().encode()
    if fmt == "json":
        return (frame.write_json() + "\n").encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return buffer.getvalue()
    if fmt == "table":
        return table(frame, title=title, columns=columns, width=width, drop_first=drop_first).encode()
    raise NsysanError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


# -- tables -----------------------------------------------------------------------------------------------------
def format_number(value: float) -> str:
    """A float with the digits that matter: 3 decimals from 1 up, 3 significant digits below 1, fewer
    decimals for large values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.3f}"
    decimals = min(12, 2 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(str(value).split())  # no newline or tab may break a row


def _header(name: str, width: int) -> str:
    """The column name, on two lines split at an underscore when it is much wider than the column."""
    if len(name) <= width or "_" not in name:
        return name
    cuts = [i for i, ch in enumerate(name) if ch == "_"]
    cut = min(cuts, key=lambda i: max(i + 1, len(name) - i - 1))
    return f"{name[:cut + 1]}\n{name[cut + 1:]}"


def _shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` in the middle: names differ at both ends (a report's model at the end, a
    kernel's own name before its template arguments)."""
    if len(text) <= width:
        return text
    if width < 8:
        return text[: max(1, width - 1)] + "…"
    head = (width - 1) * 2 // 5
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


@dataclass
class _Column:
    name: str
    cells: list[str]
    numeric: bool
    whole: bool = False  # never shortened (names the reader must copy, like a run's)

    def width(self) -> int:
        cell = max((len(c) for c in self.cells), default=0)
        return max(cell, *(len(line) for line in _header(self.name, cell).split("\n")), 1)


def table(frame: pl.DataFrame, *, title: str = "", columns: Sequence[str] | None = None, width: int = 100,
          drop_first: Sequence[str] = ()) -> str:
    """``frame`` as a text table no wider than ``width``: the chosen columns (all by default) in that order.
    Columns with no value are not shown; columns that do not fit are left out, ``drop_first`` ones first, then
    from the end, and named in a last line."""
    shown = [c for c in (columns or frame.columns) if c in frame.columns]
    return _render([_Column(name, [_cell(v) for v in frame[name].to_list()], frame.schema[name].is_numeric())
                    for name in shown], title, width, drop_first)


def rows_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, title: str = "", width: int = 100,
               drop_first: Sequence[str] = (), whole: Sequence[str] = ()) -> str:
    """:func:`table` of plain rows (dicts), for callers without polars (the experiment runner); ``whole``
    columns are never shortened."""
    def numeric(name: str) -> bool:
        values = [r.get(name) for r in rows if r.get(name) is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    return _render([_Column(name, [_cell(r.get(name)) for r in rows], numeric(name), name in whole)
                    for name in columns], title, width, drop_first)


def _render(cols: list[_Column], title: str, width: int, drop_first: Sequence[str] = ()) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cols = [c for c in cols if any(c.cells)] or cols[:1]
    widths = _fit(cols, width, drop_first)
    kept = [c for c in cols if c.name in widths]
    dropped = [c.name for c in cols if c.name not in widths]
    out = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for c in kept:
        out.add_column(Text(_header(c.name, widths[c.name])), justify="right" if c.numeric else "left",
                       width=widths[c.name], no_wrap=True, overflow="ellipsis")
    for row in zip(*[[_shorten(cell, widths[c.name]) for cell in c.cells] for c in kept]) if kept else []:
        out.add_row(*(Text(cell) for cell in row))
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None, highlight=False,
                      emoji=False, markup=False, soft_wrap=False)
    console.print(out)
    lines = [title if len(title) <= width else title[: width - 1] + "…"] if title else []
    lines += [line.rstrip() for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    if dropped:
        note = f"{len(dropped)} more column(s) in --format csv|json|parquet: {', '.join(dropped)}"
        lines.append(note if len(note) <= width else note[: width - 1] + "…")
    return "\n".join(lines) + "\n"


_SEPARATOR = 2  # between columns: one space of padding and the box's blank divider


def _fit(cols: list[_Column], width: int, drop_first: Sequence[str] = ()) -> dict[str, int]:
    """Each column's width. First the optional columns (``drop_first``) are left out, in order, while long
    text keeps a comfortable width; if that is not enough, long text is shortened to MIN_TEXT_WIDTH and
    columns are left out (``drop_first`` ones, then from the end) until the rest fits ``width``."""
    order = [c.name for c in cols]
    optional = [n for n in drop_first if n in order]
    everything = optional + [n for n in reversed(order) if n not in optional]
    for candidates, floor in ((optional, COMFORTABLE_TEXT_WIDTH), (everything, MIN_TEXT_WIDTH)):
        for gone in range(len(candidates) + 1):
            widths = _shrunk([c for c in cols if c.name not in candidates[:gone]], width, floor)
            if widths is not None:
                return widths
    return {cols[0].name: max(1, width)} if cols else {}


def _shrunk(chosen: list[_Column], width: int, floor: int) -> dict[str, int] | None:
    """Widths of ``chosen`` within ``width``, long text shortened (widest first) down to ``floor``; None when
    they cannot fit."""
    if not chosen:
        return None
    widths = {c.name: c.width() for c in chosen}
    over = sum(widths.values()) + _SEPARATOR * (len(chosen) - 1) - width
    for c in sorted((c for c in chosen if not c.numeric and not c.whole and widths[c.name] > floor),
                    key=lambda c: -widths[c.name]):
        if over <= 0:
            break
        cut = min(over, widths[c.name] - floor)
        widths[c.name] -= cut
        over -= cut
    return widths if over <= 0 else None


def terminal_width() -> int:
    """The terminal's width ($COLUMNS first); 100 when output goes to a pipe or a file."""
    return shutil.get_terminal_size((100, 24)).columns


# -- writing ------------------------------------------------------------------------------------------------------
def check_output(path: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output path that would destroy data: one of ``inputs`` (by name after resolving links, or the
    same file under another name: a hard link), a file inside an input folder, an existing nsys export or
    report (SQLite or ``.nsys-rep`` by content, a parquetdir folder), or a folder. Nothing is opened that
    could block (a FIFO is never read)."""
    target = resolved(path)
    for given in inputs:
        source = resolved(given)
        if target == source or (source.is_dir() and source in target.parents) or _same_file(target, source):
            raise NsysanError(f"{path}: is an input of this command; give another output file")
    if path.is_dir():
        raise NsysanError(f"{path}: is a directory; give a file name to write to")
    if any(p.name.endswith("_pqtdir") or (p / "StringIds.parquet").exists() for p in (target.parent, *target.parents)):
        raise NsysanError(f"{path}: lies inside an nsys parquetdir export; give another output file")
    try:
        head = read_head(path, 32)
    except UnreadableFile:
        return  # missing, unreadable or special: writing replaces the name and says what goes wrong
    if head.startswith(_PROTECTED_MAGIC):
        raise NsysanError(f"{path}: is an nsys export or report; nsysan never overwrites one (give another file)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_atomic(path: Path, data: bytes, *, inputs: Sequence[Path] = ()) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (:func:`nsysan.host.write_atomic`),
    refusing what :func:`check_output` refuses."""
    check_output(path, inputs)
    try:
        _write_file(path, data)
    except OSError as e:
        raise NsysanError(f"{path}: cannot write: {e.strerror or e}") from None


def emit(frame: pl.DataFrame, fmt: str, output: Path | None, *, title: str = "",
         columns: Sequence[str] | None = None, drop_first: Sequence[str] = (), inputs: Sequence[Path] = ()) -> None:
    """Write a result where the user asked: a file (atomically, never over an input or an nsys export)
    or stdout. ``columns`` and ``drop_first`` shape a table (see :func:`table`); files get every column."""
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise NsysanError("parquet output is binary: give -o FILE.parquet or redirect stdout")
    data = to_bytes(frame, fmt, title=title, columns=columns if fmt == "table" else None, drop_first=drop_first,
                    width=terminal_width() if output is None else 200)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_atomic(output, data, inputs=inputs)
