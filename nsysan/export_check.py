"""Is an nsys report readable, and is an export of it complete? The checks behind ``nsysan export``.

"Complete" is checked, not assumed: an interrupted export can leave a file newer than its report but broken.
"""
from __future__ import annotations

import os
import sqlite3
import unicodedata
from pathlib import Path

from nsysan import files, nsys_tool
from nsysan.errors import NotAnExportError
from nsysan.nsys_tool import NsysVersion

REPORT_MAGIC = b"NVIDIA Tegra Profiler Report"
SQLITE_MAGIC = b"SQLite format 3\x00"
PARQUET_MAGIC = b"PAR1"
META_TABLES = ("META_DATA_EXPORT", "EXPORT_META_DATA")
FINISHED_KEY = "EXPORT_TIME"
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


class ReportError(Exception):
    """One report cannot be converted; the message is a one-line reason (without the report's path)."""



def inspect_report(report: Path) -> NsysVersion | None:
    """Check that ``report`` can be read and looks like an nsys report; return the nsys version that wrote it
    when its header names one (2023+; older reports write a format number). Raises :class:`ReportError`.

    A file with an unknown binary header passes (nsys decides); empty, unreadable, text and SQLite files fail."""
    try:
        head = files.read_head(report, 512)
    except files.UnreadableFile as e:
        raise ReportError(str(e).replace("not a regular file", "not a report file")) from None
    if not head:
        raise ReportError("empty file (0 bytes): the capture was not written completely; profile again")
    if head.startswith(REPORT_MAGIC):
        line = head[len(REPORT_MAGIC):].split(b"\n", 1)[0].decode("ascii", "replace")
        return nsys_tool.parse_version(line)
    if head.startswith(SQLITE_MAGIC):
        raise ReportError("already an SQLite export, not an nsys report: read it with nsysan directly")
    text = _as_text(head)
    if text is not None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        first = first if len(first) <= 40 else first[:37] + "..."
        raise ReportError(f"not an nsys report: a text file (starts with {first!r})")
    return None


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut in half at the end of the sample
            return None
        text = head[: e.start].decode("utf-8")
    if all(ch in "\t\n\r\f" or unicodedata.category(ch)[0] != "C" for ch in text):
        return text
    return None


def export_problem(path: Path, kind: str) -> str | None:
    """Why the export at ``path`` is not complete, or None when it is. ``kind`` is "sqlite" or "parquet".

    Checked, not assumed: an SQLite export must open read-only, be as long as its header says, have no
    journal left by an interrupted writer and hold the export metadata table with the key nsys writes when the
    export finished; a parquetdir export must hold that table too and only whole Parquet files."""
    if not path.exists():
        return "missing"
    if kind == "sqlite":
        return _sqlite_problem(path)
    return _parquet_problem(path)


def _sqlite_problem(path: Path) -> str | None:
    for side in ("-journal", "-wal"):
        if os.path.lexists(f"{path}{side}"):
            return f"a writer was interrupted (left {path.name}{side})"
    try:
        head = files.read_head(path, 16)
    except files.UnreadableFile as e:
        return "not a file" if "not a regular file" in str(e) else str(e)
    if head != SQLITE_MAGIC:
        return "not an SQLite file" if head else "empty file"
    try:
        check_not_truncated(path)
    except NotAnExportError:
        return "truncated SQLite file"
    try:
        check_no_writer(path, files.read_head(path, 100))
    except (NotAnExportError, files.UnreadableFile) as e:
        return str(e).removeprefix(f"{path}: ")
    try:
        con = sqlite3.connect(files.sqlite_uri(path), uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            meta = next((t for t in META_TABLES if t in tables), None)
            if meta is None:
                return "no export metadata table (META_DATA_EXPORT): nsys did not finish writing it"
            finished = con.execute(f'SELECT count(*) FROM "{meta}" WHERE name = ?', (FINISHED_KEY,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return f"damaged SQLite file ({files.brief(e)})"
    if not finished:
        return f"the export run did not finish ({meta} lacks {FINISHED_KEY})"
    return None


def check_not_truncated(path: Path, header: bytes | None = None) -> None:
    """Compare the file's size with the size its SQLite header records (cheap, unlike a full integrity check).

    Here, with the standard library only, because the exporter checks its exports with it where DuckDB and polars
    are not installed; :mod:`nsysan.load` checks the exports it opens with it too."""
    if header is None:
        try:
            header = files.read_head(path, 100)
        except files.UnreadableFile as e:
            raise NotAnExportError(f"{path}: {e}") from None
    if len(header) < 100:
        raise NotAnExportError(f"{path}: truncated SQLite file ({len(header)} bytes); export it again")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    page_count = int.from_bytes(header[28:32], "big")
    # The recorded page count is only valid when the "version-valid-for" number matches the change counter.
    if header[92:96] == header[24:28] and page_count:
        expected = page_size * page_count
        actual = path.stat().st_size
        if actual < expected:
            raise NotAnExportError(
                f"{path}: truncated SQLite file ({actual} of {expected} bytes); export it again")


#: The first bytes of a rollback journal that SQLite would replay (a "hot" journal of an interrupted writer).
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")


def check_no_writer(path: Path, header: bytes) -> None:
    """Refuse a file that SQLite could only read by writing beside it: one in WAL mode (a reader creates
    ``-wal`` and ``-shm`` files), or one with the journal of an interrupted writer (which SQLite would replay)."""
    if header[18:20] != b"\x01\x01":
        raise NotAnExportError(f"{path}: the SQLite file is in WAL mode (not as nsys writes it): reading it would "
                               "create files beside it; export it again, or copy it and run `sqlite3 COPY "
                               "'PRAGMA journal_mode=DELETE'`")
    journal = Path(f"{path}-journal")
    try:
        hot = files.read_head(journal, 8) == JOURNAL_MAGIC
    except files.UnreadableFile:
        hot = False
    if hot:
        raise NotAnExportError(f"{path}: {journal.name} beside it holds the changes of an interrupted writer: the "
                               "export may be incomplete; export it again")


def _parquet_problem(path: Path) -> str | None:
    if not path.is_dir():
        return "not a folder"
    meta = _parquet_meta(path)
    if meta is None:
        return "no export metadata table (META_DATA_EXPORT.parquet): nsys did not finish writing it"
    for file in sorted(path.glob("*.parquet")):
        try:
            size = files.check_regular(file).st_size
            head = files.read_head(file, 4)
            with file.open("rb") as f:
                f.seek(max(size - 4, 0))
                tail = f.read(4)
        except files.UnreadableFile as e:
            return f"{file.name}: {e}"
        except OSError as e:
            return f"cannot read {file.name} ({files.reason(e, file)})"
        if size < 12 or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
            return f"{file.name} is not a whole Parquet file"
    try:
        import pyarrow.parquet as pq

        names = pq.read_table(meta, columns=["name"]).column("name").to_pylist()
    except Exception as e:  # noqa: BLE001 - any reader error means the file is unusable
        return f"cannot read {meta.name} ({files.brief(e)})"
    if FINISHED_KEY not in names:
        return f"the export run did not finish ({meta.name} lacks {FINISHED_KEY})"
    return None


def _parquet_meta(path: Path) -> Path | None:
    return next((path / f"{t}.parquet" for t in META_TABLES if (path / f"{t}.parquet").is_file()), None)


def export_mtime_ns(path: Path, kind: str) -> int:
    """When an export was written: the SQLite file's time, or a parquetdir's metadata table's (nsys writes it last)."""
    if kind == "parquet":
        meta = _parquet_meta(path)
        return (meta or path).stat().st_mtime_ns
    return path.stat().st_mtime_ns
