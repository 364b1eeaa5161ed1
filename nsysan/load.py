"""Open nsys exports (SQLite files or ``--type parquetdir`` folders) as DuckDB-backed reports.

A :class:`Report` holds one read-only DuckDB connection over one export. It exposes two layers of views:
``raw.<TABLE>`` (the nsys tables of :mod:`nsysan.schema`, normalised to fixed columns) and tidy views in
the main schema (``nvtx_ranges``, ``kernels``, ``memcpy``, ``memset``, ``gpu_ops``, ``runtime``, ``gpus``,
``threads``, ``processes``, ``session``) whose SQL lives in :mod:`nsysan.sql`.
"""
from __future__ import annotations

import functools
import inspect
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from functools import cache, cached_property
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl

from nsysan import schema
from nsysan.errors import MissingDataError, NotAnExportError
from nsysan.metadata import report_stem
from nsysan.sql import query

TIDY_VIEWS = ("nvtx_ranges", "gpu_ops", "kernels", "memcpy", "memset", "runtime", "gpus", "threads",
              "processes", "session")
SQLITE_MAGIC = b"SQLite format 3\x00"
T = TypeVar("T")


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


def _check_sqlite_export(path: Path) -> dict[str, set[str]]:
    """Fail with one clear line unless ``path`` is a readable SQLite file; return the columns of the
    tables nsysan reads, by table name."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise NotAnExportError(f"{path}: cannot read: {e.strerror or e}") from None
    if not head:
        raise NotAnExportError(f"{path}: empty file")
    if head != SQLITE_MAGIC:
        raise NotAnExportError(f"{path}: not an SQLite file (turn .nsys-rep reports into SQLite with `nsys export --type sqlite`)")
    _check_not_truncated(path)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {table: {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}
                       for table in tables & set(schema.RAW_TABLES)}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise NotAnExportError(f"{path}: damaged SQLite file ({e}); export it again") from None
    return columns


def _check_not_truncated(path: Path) -> None:
    """Compare the file's size with the size its SQLite header records (cheap, unlike a full integrity check)."""
    with path.open("rb") as f:
        header = f.read(100)
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


class Report:
    """One nsys export, opened read-only. Create it with :func:`nsysan.open`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = report_stem(self.path)
        self._derived: dict[tuple, Any] = {}
        self._con = duckdb.connect(config={"threads": 2})
        # DuckDB draws a progress bar on stderr for long queries, over our own. In Jupyter without ipywidgets
        # DuckDB refuses any change of that setting (and draws no bar there): then it stays as it is.
        try:
            self._con.execute("SET enable_progress_bar = false")
        except duckdb.Error:
            pass
        try:
            sources = self._attach()
            self._present = set(sources)
            self._create_raw_views(sources)
            for view in TIDY_VIEWS:
                self._con.execute(f"CREATE VIEW {view} AS {query(view)}")
        except duckdb.Error as e:
            self._con.close()
            raise NotAnExportError(f"{self.path}: cannot read the export ({str(e).splitlines()[0]})") from None
        except BaseException:
            self._con.close()
            raise
        if not (self._present & {"META_DATA_EXPORT", "EXPORT_META_DATA", "StringIds"}):
            self._con.close()
            raise NotAnExportError(f"{self.path}: not an nsys export (no StringIds or export metadata table)")

    def _attach(self) -> dict[str, tuple[str, set[str]]]:
        """Make the export's tables readable; return {table: (DuckDB source expression, its columns)}."""
        if self.path.is_dir():
            files = {p.stem: p for p in self.path.glob("*.parquet")}
            if not files:
                raise NotAnExportError(f"{self.path}: folder holds no .parquet tables (not an nsys parquetdir export)")
            wanted = {t: f for t, f in files.items() if t in schema.RAW_TABLES}
            out = {}
            for table, file in wanted.items():
                source = f"read_parquet('{_sql_string(str(file))}', file_row_number = true)"
                columns = {row[0] for row in self._con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
                out[table] = (source, columns | {"file_row_number"})
            return out
        if not self.path.exists():
            raise NotAnExportError(f"{self.path}: no such file")
        tables = _check_sqlite_export(self.path)
        self._con.execute(f"LOAD '{_sql_string(str(_sqlite_extension()))}'")
        self._con.execute(f"ATTACH '{_sql_string(str(self.path))}' AS nsys (TYPE sqlite, READ_ONLY)")
        return {table: (f'nsys."{table}"', columns | {"rowid"}) for table, columns in tables.items()}

    def _create_raw_views(self, sources: dict[str, tuple[str, set[str]]]) -> None:
        self._con.execute("CREATE SCHEMA raw")
        for table, columns in schema.RAW_TABLES.items():
            if table in sources:
                source, present = sources[table]
                # nsys numbers ranges by SQLite rowid (from 1); parquet row numbers count from 0.
                row = "rowid" if "file_row_number" not in present else "file_row_number + 1"
                select = [f"{row} AS _row"] + [
                    f'CAST("{c}" AS {t}) AS "{c}"' if c in present else f'CAST(NULL AS {t}) AS "{c}"'
                    for c, t in columns.items()
                ]
                self._con.execute(f'CREATE VIEW raw."{table}" AS SELECT {", ".join(select)} FROM {source}')
            else:
                select = ["CAST(NULL AS BIGINT) AS _row"] + [f'CAST(NULL AS {t}) AS "{c}"' for c, t in columns.items()]
                self._con.execute(f'CREATE VIEW raw."{table}" AS SELECT {", ".join(select)} WHERE false')

    # -- what the export holds ---------------------------------------------------------------------------
    def has(self, table: str) -> bool:
        """Whether the export holds the nsys table ``table`` (nsys creates tables only when it has data)."""
        return table in self._present

    def require(self, *tables: str, purpose: str = "this analysis") -> None:
        """Raise :class:`MissingDataError` naming the first missing table and how to capture it."""
        for table in tables:
            if not self.has(table):
                hint = schema.CAPTURE_HINTS.get(table, f"no {table} table")
                raise MissingDataError(f"{self.path}: {hint} (needed for {purpose})")

    @cached_property
    def metadata(self) -> dict[str, str]:
        """The export's metadata key/value pairs (nsys version, export time, ...)."""
        return dict(self._con.execute("SELECT key, value FROM session").fetchall())

    @cached_property
    def version(self) -> schema.ExportVersion:
        return schema.parse_export_version(self.metadata)

    # -- reading -------------------------------------------------------------------------------------------
    def sql(self, text: str, params: object = None) -> duckdb.DuckDBPyRelation:
        """Run SQL against this report's views; returns a lazy DuckDB relation."""
        return self._con.sql(text, params=params)

    def frame(self, text: str, params: object = None) -> pl.DataFrame:
        """Run SQL against this report's views and return a polars DataFrame (read through the Arrow stream
        interface, which skips pyarrow)."""
        return pl.DataFrame(self._con.sql(text, params=params))

    def table(self, name: str) -> pl.DataFrame:
        """A tidy view (one of :data:`TIDY_VIEWS`) as a polars DataFrame."""
        if name not in TIDY_VIEWS:
            raise ValueError(f"unknown table {name!r}; choose from {', '.join(TIDY_VIEWS)}")
        return self.frame(f"SELECT * FROM {name}")

    def register(self, name: str, frame: pl.DataFrame) -> None:
        """Make a DataFrame queryable by name in :meth:`sql` (used by analyses for intermediate tables)."""
        self._con.register(name, frame)

    def close(self) -> None:
        self._derived.clear()
        self._con.close()

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"


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
