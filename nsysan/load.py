"""Open nsys exports (SQLite files or ``--type parquetdir`` folders) as DuckDB-backed reports.

A :class:`Report` is one DuckDB connection over one export, opened read-only. It exposes two layers of views:
``raw.<TABLE>`` (the nsys tables of :mod:`nsysan.schema`, normalised to fixed columns, minus the rows
:mod:`nsysan.quality` finds damaged; every row is kept in ``source.<TABLE>`` where some were left out) and tidy
views in the main schema (``nvtx_ranges``, ``kernels``, ``memcpy``, ``memset``, ``gpu_ops``, ``runtime``,
``gpus``, ``threads``, ``processes``, ``session``) whose SQL lives in :mod:`nsysan.sql`. Every query through
:meth:`Report.sql` or :meth:`Report.frame` first checks the views and tables it reads (once per report).

Inputs are never changed and nothing is created beside them: SQLite files are opened read-only (through an
escaped URI where SQLite takes one), Parquet files by their literal names, and what is not a regular file (a
FIFO, a device) is refused before anything opens it.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Callable
from functools import cache, cached_property
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from nsysan import files, quality, schema
from nsysan.errors import MissingDataError, NotAnExportError
from nsysan.export_check import check_no_writer as _check_no_writer
from nsysan.export_check import check_not_truncated as _check_not_truncated
from nsysan.lazy import duckdb
from nsysan.metadata import report_stem
from nsysan.sql import query

TIDY_VIEWS = ("nvtx_ranges", "gpu_ops", "kernels", "memcpy", "memset", "runtime", "gpus", "threads",
              "processes", "session")
SQLITE_MAGIC = b"SQLite format 3\x00"
T = TypeVar("T")
#: The tidy view of each GPU-op table.
_VIEW_OF = {"CUPTI_ACTIVITY_KIND_KERNEL": "kernels", "CUPTI_ACTIVITY_KIND_MEMCPY": "memcpy",
            "CUPTI_ACTIVITY_KIND_MEMSET": "memset"}
_NAMES = re.compile(r"(?<![\w.'\"])(" + "|".join(TIDY_VIEWS) + r")(?![\w'\"])|\braw\.\"?(\w+)")


def names_read(text: str) -> list[str]:
    """The tidy views and raw tables (``raw.NAME``) that the SQL ``text`` reads, in order, without repeats."""
    code = re.sub(r"--[^\n]*", "", text)
    return list(dict.fromkeys(view or table for view, table in _NAMES.findall(code)))


@cache
def _sqlite_extension() -> Path:
    """The DuckDB sqlite scanner from the ``duckdb-extension-sqlite`` wheel, under the name DuckDB loads.

    DuckDB cannot download extensions on our machines; the wheel ships the binary as
    ``sqlite.duckdb_extension`` but DuckDB only accepts it as ``sqlite_scanner.duckdb_extension``.
    """
    import duckdb_extension_sqlite

    shipped = next(Path(duckdb_extension_sqlite.__file__).parent.rglob("sqlite.duckdb_extension"), None)
    if shipped is None:
        raise NotAnExportError("the duckdb-extension-sqlite package holds no sqlite.duckdb_extension")
    folder = Path(tempfile.gettempdir()) / f"nsysan-duckdb-{duckdb.__version__}"
    target = folder / "sqlite_scanner.duckdb_extension"
    if not target.exists() or target.stat().st_size != shipped.stat().st_size:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{target.name}.{id(folder)}.tmp"
        shutil.copyfile(shipped, partial)
        partial.replace(target)
    return target


# -- one DuckDB per process ------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_SHARED: dict[str, Any] = {}
_IDS = itertools.count(1)


def _database(sqlite: bool) -> duckdb.DuckDBPyConnection:
    """A new connection to this process's in-memory DuckDB (with the sqlite scanner loaded when ``sqlite``).

    Loading the scanner verifies its signature, which takes most of a second for its 34 MB: once per process,
    not once per report. Each report then lives in a catalog of its own (see :class:`Report`)."""
    with _LOCK:
        if _SHARED.get("pid") != os.getpid():  # a forked child must not share its parent's database
            _SHARED.clear()
            _SHARED.update(pid=os.getpid(), con=duckdb.connect(config={"threads": _threads()}),
                           sqlite=False)
        if sqlite and not _SHARED["sqlite"]:
            _SHARED["con"].execute(f"LOAD '{_sql_string(str(_sqlite_extension()))}'")
            _SHARED["sqlite"] = True
        return _SHARED["con"].cursor()


def _threads() -> int:
    """DuckDB's threads in this process: NSYSAN_DUCKDB_THREADS (set by :mod:`nsysan.parallel` in its workers, so
    that workers x threads fit the cores), else 2."""
    try:
        return max(1, int(os.environ.get("NSYSAN_DUCKDB_THREADS", "2")))
    except ValueError:
        return 2


def _release(con: duckdb.DuckDBPyConnection, catalogs: tuple[str, ...]) -> None:
    try:
        con.execute("USE memory")
        for catalog in catalogs:
            con.execute(f"DETACH DATABASE IF EXISTS {catalog}")
        con.close()
    except Exception:  # noqa: BLE001 - closing at interpreter exit or after a failed open: nothing to tell
        pass


# -- checks before anything is opened -----------------------------------------------------------------------------
def _check_sqlite_export(path: Path) -> dict[str, tuple[str, set[str]]]:
    """Fail with one clear line unless ``path`` is a readable SQLite file; return, for each table nsysan reads
    (as nsysan spells it), its name in the file and its columns (SQLite matches names without case)."""
    try:
        head = files.read_head(path, 100)
    except files.UnreadableFile as e:
        raise NotAnExportError(f"{path}: {e}") from None
    if not head:
        raise NotAnExportError(f"{path}: empty file")
    if head[:16] != SQLITE_MAGIC:
        raise NotAnExportError(f"{path}: not an SQLite file (turn .nsys-rep reports into SQLite with `nsys export --type sqlite`)")
    _check_not_truncated(path, head)
    _check_no_writer(path, head)
    wanted = {t.lower(): t for t in schema.RAW_TABLES}
    try:
        con = sqlite3.connect(files.sqlite_uri(path), uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {wanted[table.lower()]: (table, {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')})
                       for table in sorted(tables) if table.lower() in wanted}
        finally:
            con.close()
    except sqlite3.Error as e:
        raise NotAnExportError(f"{path}: damaged SQLite file ({files.brief(e)}); export it again") from None
    return columns


def _glob_literal(path: str) -> str:
    """``path`` as a DuckDB file pattern that matches only itself (``*``, ``?`` and ``[`` escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


class Report:
    """One nsys export, opened read-only. Create it with :func:`nsysan.open`.

    Reports share one DuckDB database per process; each lives in a catalog of its own (its views, and the
    export attached beside it), dropped when the report is closed or garbage-collected."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = report_stem(self.path)
        self._derived: dict[tuple, Any] = {}
        #: Outcome of each check of :mod:`nsysan.quality`, by view or table (None: passed).
        self._checked: dict[str, Any] = {}
        #: The warnings those checks raised, in order (one line each).
        self.problems: list[str] = []
        kind = self._kind()
        number = next(_IDS)
        self._catalog, self._export = f"nsysan_report_{number}", f"nsysan_export_{number}"
        self._con = _database(sqlite=kind == "sqlite")
        self._close = weakref.finalize(self, _release, self._con, (self._catalog, self._export))
        try:
            # DuckDB draws a progress bar on stderr for long queries, over our own. In Jupyter without ipywidgets
            # DuckDB refuses any change of that setting (and draws no bar there): then it stays as it is.
            try:
                self._con.execute("SET enable_progress_bar = false")
            except duckdb.Error:
                pass
            self._con.execute(f"ATTACH ':memory:' AS {self._catalog}")
            self._con.execute(f"USE {self._catalog}")
            self._sources = self._attach(kind)
            self._present = set(self._sources)
            self._columns = {table: present for table, (_, present) in self._sources.items()}
            self._made: set[str] = set()
            self._con.execute("CREATE SCHEMA source; CREATE SCHEMA raw")
            if not (self._present & {"META_DATA_EXPORT", "EXPORT_META_DATA", "StringIds"}):
                raise NotAnExportError(f"{self.path}: not an nsys export (no StringIds or export metadata table)")
            if not (self._present & {"META_DATA_EXPORT", "EXPORT_META_DATA"}):
                quality.warn(self, f"{self.path}: no export metadata table (META_DATA_EXPORT): the nsys version "
                                   "and export schema are unknown")
            self._check_version()
        except duckdb.Error as e:
            self.close()
            raise NotAnExportError(f"{self.path}: cannot read the export ({files.brief(e)})") from None
        except BaseException:
            self.close()
            raise

    def _kind(self) -> str:
        """``sqlite`` or ``parquet``; refuses before anything is opened what is neither a file nor a folder."""
        try:
            info = os.stat(self.path)
        except OSError as e:
            raise NotAnExportError(f"{self.path}: {files.reason(e, self.path)}") from None
        if os.path.isdir(self.path):
            return "parquet"
        what = files.kind(info.st_mode)
        if what is not None:
            raise NotAnExportError(f"{self.path}: {what}, not an export file or parquetdir folder")
        return "sqlite"

    def _attach(self, kind: str) -> dict[str, tuple[str, dict[str, str]]]:
        """Make the export's tables readable; return {table: (DuckDB source expression, {column: name in the
        export})}: columns are matched without regard to case, as SQLite and DuckDB match them."""
        if kind == "parquet":
            files_by_table = {p.stem: p for p in self.path.glob("*.parquet")}
            if not files_by_table:
                raise NotAnExportError(f"{self.path}: no nsys exports in this folder (no .sqlite files, and no "
                                       ".parquet tables of a parquetdir export)")
            out = {}
            for table, file in files_by_table.items():
                if table not in schema.RAW_TABLES:
                    continue
                try:
                    files.check_regular(file)
                except files.UnreadableFile as e:
                    raise NotAnExportError(f"{self.path}: {file.name}: {e}") from None
                pattern = _glob_literal(str(file.absolute()))
                matched = [row[0] for row in self._con.execute(
                    f"SELECT file FROM glob('{_sql_string(pattern)}')").fetchall()]
                if matched != [str(file.absolute())]:
                    raise NotAnExportError(f"{self.path}: {file.name}: DuckDB cannot read a file by this name")
                source = f"read_parquet('{_sql_string(pattern)}', file_row_number = true)"
                columns = [row[0] for row in self._con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
                out[table] = (source, _by_name(table, columns))
            return out
        tables = _check_sqlite_export(self.path)
        self._con.execute(f"ATTACH '{_sql_string(str(self.path.absolute()))}' AS {self._export} (TYPE sqlite, READ_ONLY)")
        return {table: (f'{self._export}."{actual}"', {**_by_name(table, columns), "rowid": "rowid"})
                for table, (actual, columns) in tables.items()}

    def _ensure(self, name: str) -> None:
        """Create the view ``name`` (a tidy view, or a raw table's ``source`` and ``raw`` views) and those it
        reads, unless they exist: views are made when a query first needs them (binding one costs a few ms,
        which a batch of small reports would pay for every view it never reads)."""
        if name in self._made or (name not in TIDY_VIEWS and name not in schema.RAW_TABLES):
            return
        if name in TIDY_VIEWS:
            text = query(name)
            for needed in names_read(text):
                if needed != name:
                    self._ensure(needed)
            self._con.execute(f"CREATE VIEW {name} AS {text}")
        else:
            self._con.execute(f'CREATE VIEW raw."{name}" AS {self._source_select(name)}')
        self._made.add(name)

    def _keep_source(self, table: str) -> None:
        """Keep every row of ``table`` as ``source.<table>`` before ``raw.<table>`` leaves some out (until then the
        two are the same rows, and only ``raw`` exists)."""
        self._ensure(table)
        self._con.execute(f'CREATE VIEW IF NOT EXISTS source."{table}" AS {self._source_select(table)}')

    def _source_select(self, table: str) -> str:
        """The export's ``table`` with exactly the columns of :data:`nsysan.schema.RAW_TABLES`: a column it lacks
        is a typed NULL, a table it lacks has no rows."""
        columns = schema.RAW_TABLES[table]
        if table not in self._sources:
            select = ["CAST(NULL AS BIGINT) AS _row"] + [f'CAST(NULL AS {t}) AS "{c}"' for c, t in columns.items()]
            return f'SELECT {", ".join(select)} WHERE false'
        source, present = self._sources[table]
        # nsys numbers ranges by SQLite rowid (from 1); parquet row numbers count from 0.
        row = "rowid" if "file_row_number" not in present else "file_row_number + 1"
        select = [f"{row} AS _row"] + [
            f'CAST("{present[c]}" AS {t}) AS "{c}"' if c in present else f'CAST(NULL AS {t}) AS "{c}"'
            for c, t in columns.items()]
        return f'SELECT {", ".join(select)} FROM {source}'

    def _check_version(self) -> None:
        version = self.version
        if version.schema is not None and version.schema[:2] > schema.NEWEST_TESTED_SCHEMA:
            newest = ".".join(map(str, schema.NEWEST_TESTED_SCHEMA))
            quality.warn(self, f"{self.path}: export schema {'.'.join(map(str, version.schema))} (by nsys "
                               f"{version.product or 'unknown'}) is newer than the newest nsysan is tested with "
                               f"({newest}): check the results")
        elif version.schema is None and self.metadata.get("EXPORT_SCHEMA_VERSION"):
            quality.warn(self, f"{self.path}: unreadable export schema version "
                               f"{self.metadata['EXPORT_SCHEMA_VERSION']!r}: check the results")

    # -- what the export holds ---------------------------------------------------------------------------
    def has(self, table: str) -> bool:
        """Whether the export holds the nsys table ``table`` (nsys creates tables only when it has data)."""
        return table in self._present

    def columns(self, table: str) -> set[str]:
        """The columns of :data:`nsysan.schema.RAW_TABLES` that the export's ``table`` really has (the views
        have all of them: a missing one reads as NULL)."""
        return set(self._columns.get(table, ())) & set(schema.RAW_TABLES.get(table, ()))

    def require(self, *tables: str, purpose: str = "this analysis") -> None:
        """Raise :class:`MissingDataError` naming the first missing (or empty) table and how to capture it."""
        for table in tables:
            hint = schema.CAPTURE_HINTS.get(table, f"no {table} table")
            view = _VIEW_OF.get(table)
            if view is not None:  # a table the export lost says so (the CUDA trace still records its launches)
                self._ensure(view)
                quality.check(self, [view])
            if not self.has(table):
                raise MissingDataError(f"{self.path}: {hint} (needed for {purpose})")
            if not self.sql(f'SELECT count(*) FROM raw."{table}"').fetchone()[0]:
                raise MissingDataError(f"{self.path}: {hint} (the {table} table is empty; needed for {purpose})")

    def require_columns(self, table: str, columns: dict[str, str] | tuple[str, ...], purpose: str | None = None
                        ) -> None:
        """Raise :class:`MissingDataError` when the export's ``table`` lacks one of ``columns`` (a dict says
        what cannot be computed without each; see :func:`nsysan.quality.require_columns`)."""
        quality.require_columns(self, table, columns, purpose)

    @cached_property
    def metadata(self) -> dict[str, str]:
        """The export's metadata key/value pairs (nsys version, export time, ...)."""
        self._ensure("session")
        return dict(self._con.execute("SELECT key, value FROM session WHERE key IS NOT NULL").fetchall())

    @cached_property
    def version(self) -> schema.ExportVersion:
        return schema.parse_export_version(self.metadata)

    # -- reading -------------------------------------------------------------------------------------------
    def sql(self, text: str, params: object = None) -> duckdb.DuckDBPyRelation:
        """Run SQL against this report's views (after checking those it reads, :mod:`nsysan.quality`); returns
        a lazy DuckDB relation."""
        names = names_read(text)
        for name in names:
            self._ensure(name)
        quality.check(self, names)
        return self._con.sql(text, params=params)

    def frame(self, text: str, params: object = None) -> pl.DataFrame:
        """Run SQL against this report's views (checked as :meth:`sql` does; a query of
        :data:`nsysan.quality.RESULT_CHECKS` is checked on its result instead) and return a polars DataFrame
        (read through the Arrow stream interface, which skips pyarrow)."""
        result_check = quality.RESULT_CHECKS.get(text)
        names = names_read(text)
        for name in names:
            self._ensure(name)
        quality.check(self, names, defer=result_check.deferred if result_check else ())
        frame = pl.DataFrame(self._con.sql(text, params=params))
        return result_check.check(self, frame) if result_check else frame

    def table(self, name: str) -> pl.DataFrame:
        """A tidy view (one of :data:`TIDY_VIEWS`) as a polars DataFrame."""
        if name not in TIDY_VIEWS:
            raise ValueError(f"unknown table {name!r}; choose from {', '.join(TIDY_VIEWS)}")
        return self.frame(f"SELECT * FROM {name}")

    def close(self) -> None:
        self._derived.clear()
        self._close()

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"


def _by_name(table: str, columns: list[str] | set[str]) -> dict[str, str]:
    """{column as :data:`nsysan.schema.RAW_TABLES` names it: as the export names it}, matched without case;
    parquet's ``file_row_number`` kept."""
    actual = {c.lower(): c for c in columns}
    out = {c: actual[c.lower()] for c in schema.RAW_TABLES.get(table, {}) if c.lower() in actual}
    if "file_row_number" in actual:
        out["file_row_number"] = "file_row_number"
    return out


def derived(compute: Callable[..., T]) -> Callable[..., T]:
    """Compute ``compute(report, **options)`` once per open report and options (a memo on the report).

    Derived tables that several analyses share (range nesting, launches, which ranges launched each op) are
    then read once per report however many analyses of one call need them. Options must be hashable."""
    name = f"{compute.__module__}.{compute.__qualname__}"
    signature = inspect.signature(compute)

    @functools.wraps(compute)
    def once(report: Report, **options: Any) -> T:
        # Defaults are bound first, so that f(report) and f(report, option=its default) share one result.
        bound = signature.bind(report, **options)
        bound.apply_defaults()
        key = (name, tuple(sorted(list(bound.arguments.items())[1:])))
        memo = report._derived
        if key not in memo:
            memo[key] = compute(report, **options)
        return memo[key]

    return once


def _sql_string(text: str) -> str:
    return text.replace("'", "''")


def open(path: str | Path) -> Report:  # noqa: A001 - mirrors builtins.open on purpose: nsysan.open(path)
    """Open one nsys export: an ``.sqlite`` file or a ``--type parquetdir`` folder."""
    return Report(path)
