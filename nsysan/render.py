"""Write analysis results as a terminal table, CSV, JSON or Parquet, to stdout or atomically to a file."""
from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from nsysan.errors import NsysanError

Format = Literal["table", "csv", "json", "parquet"]
FORMATS: tuple[str, ...] = ("table", "csv", "json", "parquet")
_BY_SUFFIX = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".txt": "table"}


def infer_format(requested: str | None, output: Path | None) -> str:
    """``--format`` if given, else the output file's extension, else a table."""
    if requested:
        return requested
    if output is not None and output.suffix.lower() in _BY_SUFFIX:
        return _BY_SUFFIX[output.suffix.lower()]
    return "table"


def to_bytes(frame: pl.DataFrame, fmt: str, *, title: str = "", columns: Sequence[str] | None = None,
             width: int | None = None) -> bytes:
    if fmt == "csv":
        return frame.write_csv().encode()
    if fmt == "json":
        return (frame.write_json() + "\n").encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return buffer.getvalue()
    if fmt == "table":
        return rich_table(frame, title=title, columns=columns, width=width).encode()
    raise NsysanError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def rich_table(frame: pl.DataFrame, *, title: str = "", columns: Sequence[str] | None = None,
               width: int | None = None) -> str:
    """A readable fixed-width table of the chosen columns (all by default); floats get 3 decimals."""
    from rich.console import Console
    from rich.table import Table

    shown = [c for c in (columns or frame.columns) if c in frame.columns]
    table = Table(title=title or None, title_justify="left", header_style="bold")
    for name in shown:
        numeric = frame.schema[name].is_numeric()
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in frame.select(shown).iter_rows():
        table.add_row(*(_cell(v) for v in row))
    console = Console(file=io.StringIO(), width=width or 200, force_terminal=False, color_system=None)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


#: First bytes of the files nsysan must never overwrite: nsys exports (SQLite) and nsys reports.
_PROTECTED_MAGIC = (b"SQLite format 3\x00", b"NVIDIA Tegra Profiler Report")


def check_output(path: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output path that would destroy data: one of ``inputs`` (or a file inside an input folder),
    an existing nsys export or report (SQLite or ``.nsys-rep`` by content, a parquetdir folder), or a folder."""
    target = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or (source.is_dir() and source in target.parents):
            raise NsysanError(f"{path}: is an input of this command; give another output file")
    if path.is_dir():
        raise NsysanError(f"{path}: is a directory; give a file name to write to")
    if any(p.name.endswith("_pqtdir") or (p / "StringIds.parquet").exists() for p in (target.parent, *target.parents)):
        raise NsysanError(f"{path}: lies inside an nsys parquetdir export; give another output file")
    try:
        with path.open("rb") as f:
            head = f.read(32)
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable or special: write_atomic replaces the name and reports what goes wrong
    if head.startswith(_PROTECTED_MAGIC):
        raise NsysanError(f"{path}: is an nsys export or report; nsysan never overwrites one (give another file)")


def write_atomic(path: Path, data: bytes, *, inputs: Sequence[Path] = ()) -> None:
    """Write to a temporary file beside ``path`` and rename it into place, so a reader never sees a
    half-written file and an earlier file survives a failed write. Refuses paths that :func:`check_output`
    refuses."""
    check_output(path, inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise NsysanError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            # mkstemp makes the file private (0600); a file the user asked for gets the usual umask mode.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise NsysanError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def emit(frame: pl.DataFrame, fmt: str, output: Path | None, *, title: str = "",
         table_columns: Sequence[str] | None = None) -> None:
    """Write a result where the user asked: a file (atomically, never over an input or an nsys export)
    or stdout."""
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise NsysanError("parquet output is binary: give -o FILE.parquet or redirect stdout")
    width = None if output is not None else _terminal_width()
    data = to_bytes(frame, fmt, title=title, columns=table_columns if fmt == "table" else None, width=width)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_atomic(output, data)


def _terminal_width() -> int:
    try:
        return max(100, os.get_terminal_size(sys.stdout.fileno()).columns)
    except OSError:
        return 200
