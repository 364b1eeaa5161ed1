"""A mutation campaign: damaged copies of real exports, by class, through every analysis command.

Each case derives one bad input from an undamaged source (a real H100 export, a small hand-built export, or the
live nsys 2023.4 parquetdir capture) and every command of :data:`COMMANDS` runs on it, in a batch with a good
export and the inputs of a few other cases (CHUNK), in-process (typer's runner) under a timeout, in a pool of
worker processes (one per core). For every (case, command) the test asserts:

* no traceback and no hang; the documented exit code (0 when the bad input was analysed, 3 when it failed and
  the good one was analysed);
* the good input of the batch was still analysed;
* the inputs are byte-for-byte unchanged and nothing was created beside them (nor in the working folder);
* the bad input either failed with one line naming it, or it was analysed and then its numbers equal those of
  the undamaged source, or a warning line names it: a result that changed without a word is *silently wrong*.

The table :data:`CASES` says per case what is expected: ``error`` (every command refuses the input), ``flag``
(some command refuses or warns, none is silently wrong), ``ok`` (the input is sound: same numbers, not a
word) or ``any`` (damage that may not touch what nsysan reads). One exception to "same numbers": ``info``
counting 0 rows of a table the damage removed is the truth about the file (:data:`HELD`). The tally (cases x commands by outcome) is printed by ``test_tally`` (``pytest -s``) and written to
``campaign-tally.json`` in pytest's base temporary folder. ``nsysan export`` on bad reports is
``test_export_on_bad_reports``; ``-o`` misuse is ``test_outputs_never_replace_inputs``.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import typer
import typer.testing
from typer.testing import CliRunner

import nsysan
from builders import MAIN_TID, ExportBuilder
from nsysan.cli import app
from nsysan.files import printable
from nsysan.metadata import report_stem

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "gpu_run" / "pipeline_gpu0_numa0_vit32x2x256.sqlite"
COMMANDS: dict[str, list[str]] = {
    "latency": ["latency"], "latency-trace": ["latency", "--trace"], "kernels": ["kernels"],
    "bandwidth": ["bandwidth"], "bandwidth-histogram": ["bandwidth", "--histogram"],
    "utilization": ["utilization"], "utilization-kernels": ["utilization", "--kernels"],
    "throughput": ["throughput"], "compare": ["compare"], "numa": ["numa"], "info": ["info"],
}
#: Seconds one command may take before the case counts as a hang.
TIMEOUT_S = 60
#: Outcomes of one (case, command); the first three are fine, the rest are defects.
FAILED, WARNED, SAME = "failed in one line", "analysed with a warning", "same numbers"
#: ``info`` counts what an export holds: a table that the damage removed (or emptied) is counted as 0, which is
#: the truth about the damaged file, not a number computed through damage.
HELD = "counted as the export holds it"
CONVERTED = "converted"  # nsysan export: a good report in a batch of bad ones
COUNT_COLUMNS = ("nvtx_ranges", "kernels", "memcpys", "memsets", "cuda_api_calls", "gpus")
DEFECTS = ("traceback", "hang", "silently wrong", "wrong exit code", "good input lost", "input changed or created")
TALLY: dict[tuple[str, str], str] = {}


# -- running commands ------------------------------------------------------------------------------------------
_COMMAND = typer.main.get_command(app)  # built once: typer rebuilds the click command on every invoke otherwise


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: int):
    def expire(*_):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Run:
    """How one command ended (plain data: it travels from a worker process)."""

    exit_code: int
    stdout: str
    stderr: str
    error: str | None = None  # an exception that escaped the command (a traceback)
    hang: bool = False


def invoke(args: list[str]) -> Run:
    runner = CliRunner()
    original = typer.testing._get_command
    typer.testing._get_command = lambda _app: _COMMAND
    try:
        with deadline(TIMEOUT_S):
            result = runner.invoke(app, args)
    except Hang:
        return Run(-1, "", "", "no answer", hang=True)
    finally:
        typer.testing._get_command = original
    exception = None if result.exception is None or isinstance(result.exception, SystemExit) else result.exception
    return Run(result.exit_code, result.stdout, result.stderr, None if exception is None else repr(exception),
               isinstance(exception, Hang))


def read_csv(text: str) -> pl.DataFrame:
    return pl.read_csv(io.StringIO(text), infer_schema=False) if text.strip() else pl.DataFrame()


# -- sources ------------------------------------------------------------------------------------------------------
def build_tiny(path: Path, batch_size: int = 4) -> Path:
    """A small export with every table nsysan reads: a warm-up, three batches with a forward each, kernels,
    copies and memsets, on two threads; numbers worked out nowhere, only compared with themselves."""
    b = ExportBuilder()
    b.range("warmup_1", 0, 900)
    b.launch(MAIN_TID, 10, 20, 30, 400, name="warm")
    for i in range(3):
        t0 = 1000 + i * 1000
        b.range(f"batch_{i}", t0, t0 + 900)
        b.range("forward", t0 + 100, t0 + 600)
        b.launch(MAIN_TID, t0 + 150, t0 + 160, t0 + 200, t0 + 400, name="void gemm<int>(float*)")
        b.launch(MAIN_TID, t0 + 170, t0 + 180, t0 + 410, t0 + 450, name="relu")
        b.launch(MAIN_TID, t0 + 650, t0 + 660, t0 + 700, t0 + 800, kind="memcpy")
        b.launch(MAIN_TID, t0 + 670, t0 + 680, t0 + 810, t0 + 820, kind="memset")
        b.range("loader", t0 + 50, t0 + 700, tid=MAIN_TID + 1)
    b.write(path)
    path.with_name(path.name.removesuffix(".sqlite") + ".meta.json").write_text(json.dumps({"batch_size": batch_size}))
    return path


@dataclass(frozen=True)
class Sources:
    folder: Path
    good: Path
    real: Path
    tiny: Path
    pq: Path | None


def _copy_export(source: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copyfile(source, dest)
    sidecar = source.with_name(report_stem(source) + ".meta.json")
    if sidecar.exists():
        shutil.copyfile(sidecar, dest.with_name(report_stem(dest) + ".meta.json"))
    return dest


@pytest.fixture(scope="module")
def sources(tmp_path_factory, request) -> Sources:
    folder = tmp_path_factory.mktemp("campaign")
    good = build_tiny(folder / "good" / "pipeline_gpu1_numa1_vit9x9x9.sqlite", batch_size=2)
    real = _copy_export(REAL, folder / "real" / REAL.name)
    tiny = build_tiny(folder / "tiny" / "pipeline_gpu0_numa0_vit4x4x4.sqlite")
    pq = None
    if os.environ.get("NSYSAN_TEST_NSYS") or shutil.which("nsys") or os.environ.get("CI", "").lower() == "true":
        capture = request.getfixturevalue("cpu_capture_2023")
        pq = _copy_export(capture.parquetdir, folder / "pq" / "cpu_nvtx_pqtdir")
    return Sources(folder, good, real, tiny, pq)


# -- damage ---------------------------------------------------------------------------------------------------------
def sql(*statements: str) -> Callable[[Path], None]:
    """Damage an SQLite copy with SQL (tables rebuilt first where a NOT NULL constraint would refuse it)."""
    def damage(path: Path) -> None:
        con = sqlite3.connect(path)
        try:
            for statement in statements:
                con.executescript(statement)
            con.commit()
        finally:
            con.close()
    return damage


def loosen(table: str) -> str:
    """SQL that rebuilds ``table`` without its constraints (same rows, same rowids, same column types)."""
    return (f'CREATE TABLE "_{table}" AS SELECT * FROM "{table}"; DROP TABLE "{table}"; '
            f'ALTER TABLE "_{table}" RENAME TO "{table}";')


def flip(offset: int, count: int = 64) -> Callable[[Path], None]:
    """Invert ``count`` bytes from ``offset`` (negative: from the end)."""
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        start = offset if offset >= 0 else len(data) + offset
        for i in range(start, min(start + count, len(data))):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    return damage


def flip_page(page: int, within: int = 200, count: int = 64) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        size = int.from_bytes(path.read_bytes()[16:18], "big")
        flip((page - 1) * size + within, count)(path)
    return damage


def flip_table_page(table: str, count: int = 400) -> Callable[[Path], None]:
    """Damage the first page of ``table``'s b-tree (its root page, from sqlite_master)."""
    def damage(path: Path) -> None:
        con = sqlite3.connect(path)
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        con.close()
        flip_page(root, within=8, count=count)(path)
    return damage


def truncate(keep: float | int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    return damage


def append(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(path.read_bytes() + data)


def sidecar(content: str | bytes | None) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        side = path.with_name(report_stem(path) + ".meta.json")
        side.unlink(missing_ok=True)
        if content is not None:
            side.write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def sidecar_special(kind: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        side = path.with_name(report_stem(path) + ".meta.json")
        side.unlink(missing_ok=True)
        {"fifo": lambda: os.mkfifo(side), "loop": lambda: os.symlink(side.name, side),
         "folder": lambda: side.mkdir(), "dangling": lambda: os.symlink("nowhere.json", side),
         "device": lambda: os.symlink("/dev/zero", side)}[kind]()
    return damage


def parquet(table: str, change: Callable) -> Callable[[Path], None]:
    """Rewrite one table of a parquetdir copy: ``change(pyarrow table) -> pyarrow table``."""
    def damage(folder: Path) -> None:
        import pyarrow.parquet as pq

        file = folder / f"{table}.parquet"
        pq.write_table(change(pq.read_table(file)), file)
    return damage


def pq_file(table: str, action: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda folder: action(folder / f"{table}.parquet")


def _remove(path: Path) -> None:
    path.unlink()


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _drop_column(column: str) -> Callable:
    return lambda table: table.drop_columns([column])


def _stringify(column: str) -> Callable:
    import pyarrow as pa

    return lambda table: table.set_column(table.schema.get_field_index(column), column,
                                          pa.array([f"t{v}" for v in table.column(column).to_pylist()]))


def _doubled(table):
    import pyarrow as pa

    return pa.concat_tables([table, table.slice(0, 3)])


def _nulled(column: str, rows: int = 3) -> Callable:
    import pyarrow as pa

    def change(table):
        values = table.column(column).to_pylist()
        return table.set_column(table.schema.get_field_index(column), column,
                                pa.array([None] * rows + values[rows:], type=table.schema.field(column).type))
    return change


# How each case places its input: a function of (case folder, undamaged copy) that returns the path to give.
Place = Callable[[Path, Path], Path]


def in_place(damage: Callable[[Path], None]) -> Place:
    def place(_folder: Path, copy: Path) -> Path:
        damage(copy)
        return copy
    return place


def renamed(folder_name: str | None = None, file_name: str | None = None) -> Place:
    """The undamaged copy moved into a folder and/or under a file name with odd characters (sidecar along)."""
    def place(folder: Path, copy: Path) -> Path:
        target_folder = folder / folder_name if folder_name else copy.parent
        target_folder.mkdir(parents=True, exist_ok=True)
        suffix = "" if copy.is_dir() else ".sqlite"
        target = target_folder / (file_name + suffix if file_name else copy.name)
        side = copy.with_name(report_stem(copy) + ".meta.json")
        copy.rename(target)
        if side.exists():
            side.rename(target.with_name(report_stem(target) + ".meta.json"))
        return target
    return place


def special(kind: str) -> Place:
    """A non-regular (or unresolvable) file named like an export, beside the undamaged copy's folder."""
    def place(folder: Path, copy: Path) -> Path:
        target = folder / "special" / f"x_{kind}.sqlite"
        target.parent.mkdir()
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "loop":
            os.symlink(target.name, target)
        elif kind == "dangling":
            os.symlink("gone.sqlite", target)
        elif kind == "device":
            os.symlink("/dev/zero", target)
        elif kind == "folder":
            target.mkdir()
        elif kind == "socket":
            server = socket.socket(socket.AF_UNIX)
            try:
                os.chdir(target.parent)  # socket paths are limited to ~100 bytes
                server.bind(target.name)
            finally:
                os.chdir(folder.parent)
                server.close()
        elif kind in ("symlink", "hardlink"):
            target = target.parent / copy.name
            link = os.symlink if kind == "symlink" else os.link
            link(copy, target)
            side = copy.with_name(report_stem(copy) + ".meta.json")
            link(side, target.with_name(side.name))
        elif kind == "empty-folder":
            target = target.parent / "nothing_here"
            target.mkdir()
        elif kind == "folder-of-fifos":
            os.mkfifo(target)
            target = target.parent
        return target
    return place


@dataclass(frozen=True)
class Case:
    klass: str
    name: str
    source: str         # real | tiny | pq
    place: Place
    expect: str         # error | flag | ok | any (no expectation beyond the rules every case obeys)

    @property
    def id(self) -> str:
        return f"{self.klass}/{self.name}"


K, M, S, R, N = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
                 "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS")
#: Odd characters in file and folder names, a few per case: URI syntax, glob syntax, SQL and shell quoting,
#: white space, line breaks and non-ASCII text.
ODD = {"uri ? # %": "a?b#c%41d%2F", "glob [ ] * ?": "a[1]b*c?", "quotes ' \" ; $": "a'b\"c;d$HOME`x`",
       "spaces, newline, backslash, unicode": "a b\nc\\dé✓"}

CASES: list[Case] = [
    # -- damaged SQLite pages, truncation, headers ------------------------------------------------------------
    *[Case("page flips", f"{t}", "real", in_place(flip_table_page(t)), "flag") for t in (K, R, N, M, "StringIds")],
    Case("page flips", "schema page", "real", in_place(flip_page(1, within=120, count=600)), "error"),
    Case("page flips", "file header", "real", in_place(flip(0, 16)), "error"),
    Case("page flips", "page size", "real", in_place(flip(16, 2)), "error"),
    Case("page flips", "last pages", "real", in_place(flip(-3000, 2000)), "any"),
    *[Case("truncation", name, "real", in_place(truncate(keep)), "error") for name, keep in
      (("half", 0.5), ("last byte", -1), ("one page", 4096), ("header only", 100), ("99 bytes", 99),
       ("16 bytes", 16), ("empty", 0))],
    Case("truncation", "garbage appended", "real", in_place(append(b"\0garbage" * 1000)), "ok"),
    Case("truncation", "stray journal", "real",
         in_place(lambda p: Path(f"{p}-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + bytes(504))), "error"),
    Case("truncation", "zeroed journal", "real", in_place(lambda p: Path(f"{p}-journal").write_bytes(bytes(512))), "ok"),
    Case("truncation", "WAL mode", "real", in_place(sql("PRAGMA journal_mode=WAL;")), "error"),
    # -- dropped and renamed tables ------------------------------------------------------------------------------
    *[Case("dropped tables", t, "real", in_place(sql(f'DROP TABLE "{t}";')), "flag")
      for t in (N, K, M, S, R, "StringIds", "ENUM_CUDA_MEMCPY_OPER", "ENUM_CUDA_MEM_KIND", "META_DATA_EXPORT")],
    Case("dropped tables", "TARGET_INFO_GPU", "real", in_place(sql('DROP TABLE "TARGET_INFO_GPU";')), "any"),
    *[Case("dropped tables", t, "real", in_place(sql(f'DROP TABLE "{t}";')), "ok")
      for t in ("ANALYSIS_DETAILS", "PROCESSES", "ThreadNames", "TARGET_INFO_SESSION_START_TIME")],
    Case("dropped tables", "StringIds and metadata", "real",
         in_place(sql('DROP TABLE "StringIds"; DROP TABLE "META_DATA_EXPORT";')), "error"),
    Case("dropped tables", "kernel and memcpy (tiny)", "tiny", in_place(sql(f'DROP TABLE "{K}"; DROP TABLE "{M}";')),
         "flag"),
    Case("renamed tables", f"{K} renamed", "real", in_place(sql(f'ALTER TABLE "{K}" RENAME TO "{K}_OLD";')), "flag"),
    Case("renamed tables", f"{N} lower case", "real", in_place(sql(f'ALTER TABLE "{N}" RENAME TO "x"; ALTER TABLE "x" RENAME TO "nvtx_events";')),
         "ok"),
    # -- dropped and renamed columns -------------------------------------------------------------------------
    *[Case("dropped columns", f"{t}.{c}", src, in_place(sql(f'ALTER TABLE "{t}" DROP COLUMN "{c}";')), "flag")
      for src, t, c in (("real", N, "end"), ("real", N, "text"), ("real", N, "globalTid"), ("real", N, "eventType"),
                        ("real", K, "start"), ("real", K, "end"), ("real", K, "demangledName"), ("real", K, "shortName"),
                        ("real", K, "deviceId"), ("real", K, "streamId"), ("real", K, "correlationId"),
                        ("real", K, "globalPid"), ("real", M, "bytes"), ("real", M, "copyKind"), ("real", M, "srcKind"),
                        ("real", S, "bytes"), ("real", R, "correlationId"), ("real", R, "globalTid"),
                        ("real", R, "nameId"), ("real", "StringIds", "value"), ("tiny", N, "domainId"),
                        ("tiny", N, "endGlobalTid"))],
    Case("renamed columns", f"{K}.end", "real", in_place(sql(f'ALTER TABLE "{K}" RENAME COLUMN "end" TO "stop";')),
         "flag"),
    Case("renamed columns", f"{M}.bytes", "real", in_place(sql(f'ALTER TABLE "{M}" RENAME COLUMN "bytes" TO "size";')),
         "flag"),
    Case("renamed columns", f"{K}.end upper case", "real",
         in_place(sql(f'ALTER TABLE "{K}" RENAME COLUMN "end" TO "END";')), "ok"),
    # -- NULLs -------------------------------------------------------------------------------------------------
    *[Case("NULLs", f"{t}.{c} {where}", src, in_place(sql(loosen(t), f'UPDATE "{t}" SET "{c}" = NULL WHERE {where};')),
           "flag")
      for src, t, c, where in (
          ("real", K, "end", "rowid % 50 = 0"), ("real", K, "deviceId", "rowid < 5"),
          ("real", K, "correlationId", "rowid % 40 = 0"), ("real", K, "demangledName", "rowid = 3"),
          ("real", K, "end", "true"), ("real", M, "bytes", "rowid % 10 = 0"), ("real", M, "srcKind", "rowid < 4"),
          ("real", S, "bytes", "rowid = 1"), ("real", R, "correlationId", "rowid % 100 = 0"),
          ("real", N, "end", "rowid % 20 = 0"), ("real", N, "end", "true"), ("real", N, "globalTid", "rowid = 11"),
          ("real", "StringIds", "value", "true"), ("tiny", K, "start", "rowid = 2"), ("tiny", N, "text", "rowid = 3"),
          ("tiny", K, "streamId", "rowid = 2"))],
    # -- reversed and duplicated rows ----------------------------------------------------------------------------
    *[Case("reversed rows", f"{t}", src, in_place(sql(f'UPDATE "{t}" SET start = "end", "end" = start WHERE {w};')),
           "flag")
      for src, t, w in (("real", K, "rowid % 30 = 0"), ("real", M, "rowid < 3"), ("tiny", S, "rowid = 2"),
                        ("real", N, "rowid IN (3, 4)"), ("real", R, "rowid % 200 = 0"), ("real", K, "true"))],
    *[Case("duplicated rows", f"{t} {w}", src, in_place(sql(loosen(t), f'INSERT INTO "{t}" SELECT * FROM "{t}" WHERE {w};')),
           "flag")
      for src, t, w in (("real", K, "rowid % 10 = 0"), ("real", K, "true"), ("real", M, "rowid < 5"),
                        ("tiny", S, "rowid = 1"), ("real", N, "rowid IN (5, 6)"), ("real", R, "rowid % 50 = 0"),
                        ("real", "StringIds", "true"), ("tiny", "ENUM_CUDA_MEM_KIND", "true"),
                        ("real", "TARGET_INFO_GPU", "true"))],
    Case("duplicated rows", "StringIds id with another name", "real",
         in_place(sql(loosen("StringIds"), "INSERT INTO StringIds SELECT id, value || '_other' FROM StringIds "
                                           "WHERE id IN (SELECT demangledName FROM CUPTI_ACTIVITY_KIND_KERNEL LIMIT 3);")),
         "flag"),
    # -- absurd values ------------------------------------------------------------------------------------------------
    *[Case("absurd values", name, src, in_place(sql(statement)), "flag") for src, name, statement in (
        ("real", "kernel ends in a thousand years", f'UPDATE "{K}" SET "end" = "end" + 31556952000000000000 WHERE rowid = 9;'),
        ("real", "kernel starts before time", f'UPDATE "{K}" SET start = -4000000000000 WHERE rowid = 9;'),
        ("real", "kernel lasts 10 s", f'UPDATE "{K}" SET "end" = start + 10000000000000 WHERE rowid = 4;'),
        ("real", "negative copy size", f'UPDATE "{M}" SET bytes = -1048576 WHERE rowid = 2;'),
        ("real", "exabyte copy", f'UPDATE "{M}" SET bytes = 1000000000000000000 WHERE rowid = 2;'),
        ("real", "range ends at 2^62", f'UPDATE "{N}" SET "end" = 4611686018427387904 WHERE rowid = 4;'),
        ("real", "CUDA call at -2^62", f'UPDATE "{R}" SET start = -4611686018427387904 WHERE rowid = 30;'),
        ("real", "max int64 times", f'UPDATE "{K}" SET start = 9223372036854775806, "end" = 9223372036854775807 '
                                    'WHERE rowid = 5;'),
        ("tiny", "memset of an exabyte", f'UPDATE "{S}" SET bytes = 1000000000000000000 WHERE rowid = 1;'),
    )],
    *[Case("wrong types", name, "real", in_place(sql(statement)), "flag") for name, statement in (
        ("text in kernel start", f"UPDATE \"{K}\" SET start = 'soon' WHERE rowid = 3;"),
        ("text in NVTX end", f"UPDATE \"{N}\" SET \"end\" = 'later' WHERE rowid = 3;"),
        ("text in StringIds id", loosen("StringIds") + "UPDATE StringIds SET id = 'x' WHERE rowid = 3;"),
        ("real number in kernel end", f'UPDATE "{K}" SET "end" = "end" + 0.5 WHERE rowid = 3;'),
        ("blob in copy bytes", f"UPDATE \"{M}\" SET bytes = x'00ff' WHERE rowid = 3;"),
    )],
    Case("empty tables", K, "real", in_place(sql(f'DELETE FROM "{K}";')), "flag"),
    Case("empty tables", N, "real", in_place(sql(f'DELETE FROM "{N}";')), "flag"),
    Case("empty tables", "StringIds", "tiny", in_place(sql('DELETE FROM "StringIds";')), "flag"),
    Case("versions", "future export schema", "real",
         in_place(sql("UPDATE META_DATA_EXPORT SET value = '9.1.0' WHERE name = 'EXPORT_SCHEMA_VERSION';")), "flag"),
    Case("versions", "unreadable export schema", "real",
         in_place(sql("UPDATE META_DATA_EXPORT SET value = 'three' WHERE name = 'EXPORT_SCHEMA_VERSION';")), "flag"),
    # -- special files ------------------------------------------------------------------------------------------------
    *[Case("special files", kind, "tiny", special(kind), "error")
      for kind in ("fifo", "loop", "dangling", "device", "folder", "socket", "empty-folder", "folder-of-fifos")],
    *[Case("special files", kind, "tiny", special(kind), "ok") for kind in ("symlink", "hardlink")],
    # -- odd file and folder names ----------------------------------------------------------------------------------------
    *[Case("odd names", f"folder {label}", "real", renamed(folder_name=f"d{chars}d"), "ok") for label, chars in ODD.items()],
    *[Case("odd names", f"file {label}", "tiny", renamed(file_name=f"pipeline_gpu0_numa0_vit4x4x4_{chars}"), "ok")
      for label, chars in ODD.items()],
    Case("odd names", "parquetdir folder ?#%", "pq", renamed(file_name="cpu?#%41_pqtdir"), "ok"),
    Case("odd names", "parquetdir folder [*]", "pq", renamed(file_name="cpu[*]_pqtdir"), "ok"),
    # -- broken sidecars ------------------------------------------------------------------------------------------------
    *[Case("broken sidecars", name, "tiny", in_place(sidecar(content)), "error") for name, content in (
        ("invalid JSON", "{batch_size: 4"), ("empty", ""), ("an array", "[4]"), ("a string", '"big"'),
        ("batch_size ten", '{"batch_size": "ten"}'), ("batch_size -5", '{"batch_size": -5}'),
        ("batch_size 2.5", '{"batch_size": 2.5}'), ("batch_size true", '{"batch_size": true}'),
        ("batch_size as text", '{"batch_size": "4"}'), ("numa text", '{"numa": "zero"}'), ("gpu -1", '{"gpu": -1}'),
        ("huge integer", '{"run_id": 123456789012345678901234567890}'), ("NaN", '{"lr": NaN}'),
        ("deep nesting", "[" * 50000 + "]" * 50000), ("invalid UTF-8", b'{"model": "\xff\xfe"}'),
        ("samples_per_s zero", '{"samples_per_s": 0}'))],
    *[Case("broken sidecars", f"sidecar is {kind}", "tiny", in_place(sidecar_special(kind)), "error")
      for kind in ("fifo", "loop", "folder", "dangling", "device")],
    Case("broken sidecars", "sidecar removed", "tiny", in_place(sidecar(None)), "flag"),
    Case("broken sidecars", "unknown nested fields", "tiny",
         in_place(sidecar('{"batch_size": 4, "config": {"a": [1, {"b": null}]}, "note": "x"}')), "ok"),
    # -- damaged parquetdir folders ----------------------------------------------------------------------------------------
    Case("parquet", "NVTX_EVENTS truncated", "pq", in_place(pq_file(N, truncate(0.5))), "error"),
    Case("parquet", "NVTX_EVENTS flipped", "pq", in_place(pq_file(N, flip(-200, 60))), "error"),
    Case("parquet", "NVTX_EVENTS pages flipped", "pq", in_place(pq_file(N, flip(40, 200))), "flag"),
    Case("parquet", "NVTX_EVENTS empty file", "pq", in_place(pq_file(N, _empty)), "error"),
    Case("parquet", "NVTX_EVENTS removed", "pq", in_place(pq_file(N, _remove)), "flag"),
    Case("parquet", "StringIds removed", "pq", in_place(pq_file("StringIds", _remove)), "flag"),
    Case("parquet", "StringIds a FIFO", "pq", in_place(pq_file("StringIds", _fifo)), "error"),
    Case("parquet", "NVTX_EVENTS a folder", "pq", in_place(pq_file(N, _folder)), "error"),
    Case("parquet", "NVTX_EVENTS.end dropped", "pq", in_place(parquet(N, _drop_column("end"))), "flag"),
    Case("parquet", "NVTX_EVENTS.start as text", "pq", in_place(parquet(N, _stringify("start"))), "flag"),
    Case("parquet", "NVTX_EVENTS rows duplicated", "pq", in_place(parquet(N, _doubled)), "flag"),
    Case("parquet", "NVTX_EVENTS.end NULLs", "pq", in_place(parquet(N, _nulled("end"))), "flag"),
    Case("parquet", "metadata removed", "pq", in_place(pq_file("META_DATA_EXPORT", _remove)), "flag"),
    Case("parquet", "only metadata left", "pq",
         in_place(lambda f: [p.unlink() for p in f.glob("*.parquet") if p.name != "META_DATA_EXPORT.parquet"]), "flag"),
    Case("parquet", "no parquet files", "pq", in_place(lambda f: [p.unlink() for p in f.glob("*.parquet")]), "error"),
    Case("parquet", "garbage file beside", "pq", in_place(lambda f: (f / "notes.txt").write_text("x")), "ok"),
]


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): its type, and the bytes of regular files."""
    out = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            info = path.lstat()
            # A folder's own time changes with what is added to it, which the entries below it show.
            entry: tuple = (oct(info.st_mode),) if path.is_dir() and not path.is_symlink() else (
                oct(info.st_mode), info.st_mtime_ns)
            if path.is_file() and not path.is_symlink():
                entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
            out[str(path.relative_to(folder))] = entry
    return out


def _rows_of(frame: pl.DataFrame, report: str, metadata: set[str]) -> pl.DataFrame:
    if frame.is_empty():
        return frame
    if "report" in frame.columns:
        frame = frame.filter(pl.col("report") == report)
    keep = [c for c in frame.columns if c not in metadata and c not in ("report", "baseline")]
    return frame.select(keep).sort(keep, nulls_last=True) if keep else frame


def _as_source(line: str, paths: dict[str, str], named: str, source_name: str) -> str:
    for given, source in sorted(paths.items(), key=lambda item: -len(item[0])):
        line = line.replace(given, source)
    return line.replace(named, source_name) if named else line


@dataclass
class Placed:
    """One case's input in a batch: where it is, and how outputs and messages name it."""

    number: int
    given: str
    named: str
    mentions: list[str]
    paths: dict[str, str]
    source: str

    @property
    def case(self) -> Case:
        return CASES[self.number]


def run_baseline(name: str, sources: dict[str, str]) -> dict[str, Run]:
    """Every command on the undamaged source ``name``, batched with the good export as the cases are."""
    return {command: invoke([*args, sources["good"], sources[name], "-f", "csv"]) for command, args in COMMANDS.items()}


def run_chunk(numbers: list[int], folder: str, sources: dict[str, str]) -> dict:
    """In a worker process: place the inputs of the cases ``numbers`` under ``folder`` and run every command on
    a batch of the good export and them; what changed under ``folder`` (and the good export's) comes back too."""
    base = Path(folder)
    os.chdir(base)  # nothing may be created in the working folder either
    placed, before = [], {}
    for number in numbers:
        case_folder = base / f"c{number:03d}"
        case_folder.mkdir()
        case = CASES[number]
        source = Path(sources[case.source])
        stem = report_stem(source)
        unique = (f"{stem.removesuffix('_pqtdir')}_c{number:03d}_pqtdir" if source.is_dir()
                  else f"{stem}_c{number:03d}{source.suffix}")
        copy = _copy_export(source, case_folder / unique)
        given = case.place(case_folder, copy)
        side = given.with_name(report_stem(given) + ".meta.json")
        placed.append(Placed(number, str(given), "", [printable(str(p)) for p in (given, copy, side)],
                             {printable(str(given)): printable(str(source)), printable(str(copy)): printable(str(source))},
                             str(source)))
        before[number] = _snapshot(case_folder)
    good = Path(sources["good"])
    collection = nsysan.collect([good, *(Path(p.given) for p in placed)])
    for p in placed:
        folder_of = base / f"c{p.number:03d}"
        p.named = collection.names.get(Path(p.given)) or next(
            (n for path, n in collection.names.items() if folder_of in path.parents), "")
        if p.named:
            p.mentions += [f"{p.named}:", f"report={p.named}", f"{p.named} "]
    metadata = {k for k in collection.keys if k != "report"} | {
        "model", "gpu", "numa", "variant", "batch_size", "gpu_numa_node", "samples_per_s"}
    good_before, base_before = _snapshot(good.parent), {k for k in _snapshot(base) if "/" not in k}
    runs = {command: invoke([*args, str(good), *(p.given for p in placed), "-f", "csv"])
            for command, args in COMMANDS.items()}
    changed = {n: sorted(set(_snapshot(base / f"c{n:03d}").items()) ^ set(before[n].items()))[:6] for n in numbers}
    created = sorted({k for k in _snapshot(base) if "/" not in k} - base_before)
    if _snapshot(good.parent) != good_before:
        created.append("(the good export's folder changed)")
    return {"placed": placed, "metadata": metadata, "runs": runs, "changed": changed, "created": created,
            "good": str(good)}


def _judge(run: Run, placed: list[Placed], baselines, command: str, metadata: set[str], good: Path) -> dict[int, str]:
    """Each case's outcome of one batch run."""
    if run.hang:
        return {p.number: "hang" for p in placed}
    lines = run.stderr.splitlines()
    if run.error is not None or "Traceback" in run.stderr + run.stdout or any(
            not line.startswith("nsysan: ") for line in lines):
        return {p.number: "traceback" for p in placed}
    if run.exit_code not in (0, 3):
        return {p.number: "good input lost" if run.exit_code == 1 else "wrong exit code" for p in placed}
    frame = read_csv(run.stdout)
    if "report" in frame.columns and report_stem(good) not in frame["report"].to_list():
        return {p.number: "good input lost" for p in placed}
    out, failed = {}, []
    for p in placed:
        base_run = baselines[p.case.source][command]
        about = [line for line in lines if any(m in line for m in p.mentions)]
        known = set(base_run.stderr.splitlines())
        source_name = report_stem(Path(p.source))
        new = [line for line in about if _as_source(line, p.paths, p.named, source_name) not in known]
        in_output = "report" in frame.columns and p.named in frame["report"].to_list()
        # Lines about a case that its source gets too are warnings (unless the source failed as well): a
        # case whose command has no report column is judged by its numbers then.
        if about and run.exit_code == 3 and not in_output and (new or base_run.exit_code == 3):
            failed.append(p)
            # It failed: as the undamaged source does (the same lines), or in a line of its own.
            out[p.number] = SAME if base_run.exit_code == 3 and not new else FAILED
            continue
        theirs = _rows_of(read_csv(base_run.stdout), source_name, metadata)
        ours = _rows_of(frame, p.named, metadata)
        same = theirs.columns == ours.columns and theirs.equals(ours)
        if not same and not new and command == "info" and theirs.columns == ours.columns and ours.height == 1 == \
                theirs.height and all(c in COUNT_COLUMNS and ours[c][0] == "0" for c in ours.columns
                                      if ours[c][0] != theirs[c][0]):
            out[p.number] = HELD
            continue
        out[p.number] = WARNED if new else SAME if same else "silently wrong"
    if run.exit_code == 3 and not failed:
        return {p.number: "wrong exit code" for p in placed}
    return out


CHUNK = 8


@pytest.fixture(scope="module")
def results(sources: Sources, tmp_path_factory) -> dict[int, dict]:
    """Every case, in batches of CHUNK cases, run by a pool of worker processes (one per core, at most 4), then
    judged against the undamaged sources' runs."""
    paths = {"good": str(sources.good), "real": str(sources.real), "tiny": str(sources.tiny),
             "pq": str(sources.pq) if sources.pq else ""}
    folder = tmp_path_factory.mktemp("campaign-cases")
    runnable = [i for i, case in enumerate(CASES) if paths[case.source]]
    chunks = [runnable[i:i + CHUNK] for i in range(0, len(runnable), CHUNK)]
    workers = max(1, min(4, len(os.sched_getaffinity(0))))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        base_futures = {name: pool.submit(run_baseline, name, paths) for name in ("real", "tiny", "pq") if paths[name]}
        chunk_futures = []
        for n, chunk in enumerate(chunks):
            chunk_folder = folder / f"batch{n:02d}"
            chunk_folder.mkdir()
            chunk_futures.append(pool.submit(run_chunk, chunk, str(chunk_folder), paths))
        limit = TIMEOUT_S * len(COMMANDS) * (len(chunks) + 3)
        baselines = {name: future.result(timeout=limit) for name, future in base_futures.items()}
        batches = [future.result(timeout=limit) for future in chunk_futures]
    for name, runs in baselines.items():
        for command, run in runs.items():
            assert run.error is None and run.exit_code in (0, 3), (name, command, run)
    out: dict[int, dict] = {}
    for batch in batches:
        numbers = [p.number for p in batch["placed"]]
        out.update({n: {"outcomes": {}, "problems": []} for n in numbers})
        for command, run in batch["runs"].items():
            judged = _judge(run, batch["placed"], baselines, command, batch["metadata"], Path(batch["good"]))
            for n in numbers:
                out[n]["outcomes"][command] = judged[n]
                if judged[n] in DEFECTS:
                    out[n]["problems"].append(f"{command}: {judged[n]}: exit {run.exit_code}, {run.error}\n"
                                              f"{run.stderr[-3000:]}")
        for n in numbers:
            if batch["changed"][n]:
                out[n]["outcomes"]["inputs"] = "input changed or created"
                out[n]["problems"].append(f"inputs changed or files created: {batch['changed'][n]}")
            if batch["created"]:
                out[n]["outcomes"]["inputs"] = "input changed or created"
                out[n]["problems"].append(f"files created beside the batch: {batch['created']}")
    return out


@pytest.mark.parametrize("number", range(len(CASES)), ids=[c.id for c in CASES])
def test_case(number: int, results) -> None:
    case = CASES[number]
    if number not in results:
        pytest.skip("no live parquetdir capture (nsys not installed)")
    outcomes = results[number]["outcomes"]
    problems = list(results[number]["problems"])
    for command, outcome in outcomes.items():
        TALLY[case.id, command] = outcome
    per_command = [outcomes[c] for c in COMMANDS]
    if case.expect == "error":
        problems += [f"{c}: expected a failure, got {o}" for c, o in zip(COMMANDS, per_command) if o != FAILED]
    elif case.expect == "ok":
        problems += [f"{c}: expected the same numbers and no word, got {o}" for c, o in zip(COMMANDS, per_command)
                     if o != SAME]
    elif case.expect == "flag" and not any(o in (FAILED, WARNED) for o in per_command):
        problems.append("expected a failure or a warning from some command, got none")
    assert not problems, "\n".join(problems)


# -- nsysan export on bad reports ------------------------------------------------------------------------------------
def _bad_reports(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a bad .nsys-rep input, words its one failure line must hold)."""
    folder.mkdir(parents=True)
    made = {}

    def add(name: str, words: str, make: Callable[[Path], None]) -> None:
        path = folder / f"{name}.nsys-rep"
        make(path)
        made[name] = (path, words)

    add("fifo", "a FIFO (named pipe), not a report file", os.mkfifo)
    add("loop", "a symbolic link loop", lambda p: os.symlink(p.name, p))
    add("dangling", "no such file (a broken link)", lambda p: os.symlink("gone.nsys-rep", p))
    add("device", "a character device, not a report file", lambda p: os.symlink("/dev/zero", p))
    add("empty", "empty file", lambda p: p.write_bytes(b""))
    add("text", "not an nsys report: a text file", lambda p: p.write_text("profile again\n"))
    add("sqlite", "already an SQLite export", lambda p: shutil.copyfile(REAL, p))
    add("truncated", "truncated or damaged report", lambda p: p.write_bytes(good.read_bytes()[:40_000]))
    add("garbage", "damaged report", lambda p: p.write_bytes(good.read_bytes()[:200] + os.urandom(20_000)))
    return made


def test_export_on_bad_reports(tmp_path: Path, cpu_capture_2023) -> None:
    """Bad reports in one batch with good ones (one of them under a folder and name full of odd characters):
    one line each, the good ones converted, inputs untouched, nothing created but the good reports' exports,
    no hang (a subprocess under a timeout: FIFOs and links are among the inputs)."""
    nsys = cpu_capture_2023.nsys
    good_report = cpu_capture_2023.sqlite.with_suffix(".nsys-rep")
    runs = tmp_path / "runs"
    bad = _bad_reports(runs / "bad", good_report)
    odd = runs / "d?#%41[1] 'é" / "run?#%20x.nsys-rep"
    odd.parent.mkdir(parents=True)
    shutil.copyfile(good_report, odd)
    plain = runs / "plain.nsys-rep"
    shutil.copyfile(good_report, plain)
    before = _snapshot(runs)
    cli = [os.environ.get("PYTHON", sys.executable), "-m", "nsysan"]
    started = time.monotonic()
    done = subprocess.run([*cli, "export", str(runs), str(bad["loop"][0]), "--nsys", nsys, "-j", "2", "-f", "json"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert time.monotonic() - started < 240
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and all(line.startswith("nsysan: ") for line in done.stderr.splitlines())
    rows = {Path(r["report"]).name: r for r in json.loads(done.stdout)}
    for name, (path, words) in bad.items():
        lines = [line for line in done.stderr.splitlines() if printable(str(path)) in line]
        assert len(lines) == 1 and words in lines[0], (name, done.stderr)
        assert rows[path.name]["status"] == "failed"
        TALLY[f"export reports/{name}", "export"] = FAILED
    assert rows[odd.name]["status"] == rows[plain.name]["status"] == "converted", done.stderr
    TALLY["export reports/odd name", "export"] = TALLY["export reports/plain", "export"] = CONVERTED
    with nsysan.open(odd.with_name("run?#%20x.sqlite")) as converted, nsysan.open(cpu_capture_2023.sqlite) as same:
        assert converted.table("nvtx_ranges").height == same.table("nvtx_ranges").height
    after = _snapshot(runs)
    assert {k: v for k, v in after.items() if k in before} == before  # every input as it was
    assert sorted(set(after) - set(before)) == sorted([str(odd.with_name("run?#%20x.sqlite").relative_to(runs)),
                                                        "plain.sqlite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


# -- outputs never replace inputs --------------------------------------------------------------------------------------
def test_outputs_never_replace_inputs(sources: Sources, tmp_path: Path) -> None:
    """``-o`` onto an input under any name, onto another export, a report, a sidecar, into a parquetdir or onto a
    FIFO: every command refuses the destructive ones in one line and exits 1; all inputs stay byte-for-byte."""
    inputs = tmp_path / "in"
    export = _copy_export(sources.tiny, inputs / sources.tiny.name)
    other = _copy_export(sources.real, tmp_path / "other" / sources.real.name)
    (tmp_path / "link.sqlite").symlink_to(export)
    os.link(export, tmp_path / "hard.csv")
    report = tmp_path / "run.nsys-rep"
    report.write_bytes(b"NVIDIA Tegra Profiler Report 2025.3.1\n" + bytes(300))
    targets = {"the input": export, "a symlink to it": tmp_path / "link.sqlite", "a hard link to it": tmp_path / "hard.csv",
               "its sidecar": export.with_name(report_stem(export) + ".meta.json"), "another export": other,
               "an nsys report": report, "the input by ..": inputs / ".." / "in" / export.name}
    if sources.pq is not None:
        targets["inside a parquetdir"] = sources.pq / "out.csv"
    watched = [inputs, tmp_path / "other"] + ([sources.pq] if sources.pq else [])
    before = {str(w): _snapshot(w) for w in watched}
    before_files = {p: p.read_bytes() for p in (report, tmp_path / "hard.csv")}
    for command, args in COMMANDS.items():
        for what, target in targets.items():
            run = invoke([*args, str(export), "-o", str(target)])
            assert run.error is None and not run.hang, (command, what, run)
            assert run.exit_code == 1, (command, what, run.stderr)
            assert len(run.stderr.splitlines()) == 1 and printable(str(target)) in run.stderr, (command, what)
            TALLY[f"outputs/{what}", command] = FAILED
    for command, args in COMMANDS.items():  # an input folder: nothing is written inside it
        run = invoke([*args, str(inputs), "-o", str(inputs / "out.csv")])
        assert run.exit_code == 1 and "is an input of this command" in run.stderr, (command, run.stderr)
        TALLY["outputs/inside an input folder", command] = FAILED
    assert {str(w): _snapshot(w) for w in watched} == before
    assert {p: p.read_bytes() for p in before_files} == before_files
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    run = invoke(["kernels", str(export), "-o", str(fifo), "-f", "csv"])  # replaced by the result, never read
    assert run.exit_code == 0 and fifo.is_file() and "gemm" in fifo.read_text()


def test_tally(tmp_path_factory) -> None:
    """The campaign's own count (run last): cases x commands by outcome; no defect anywhere."""
    if not TALLY:
        pytest.skip("no campaign case ran")
    cases = {case for case, _ in TALLY}
    by_class = Counter((case.split("/")[0], outcome) for (case, _), outcome in TALLY.items())
    totals = Counter(outcome for (_, command), outcome in TALLY.items() if command != "inputs")
    report = {"cases": len(cases), "commands": len(COMMANDS), "runs": sum(totals.values()),
              "outcomes": dict(totals), "inputs changed": sum(1 for (_, c) in TALLY if c == "inputs"),
              "by_class": {f"{k} / {o}": n for (k, o), n in sorted(by_class.items())}}
    (tmp_path_factory.getbasetemp() / "campaign-tally.json").write_text(json.dumps(report, indent=1))
    print(f"\ncampaign: {report['cases']} cases x {report['commands']} commands = {report['runs']} runs")
    for outcome, n in totals.most_common():
        print(f"  {outcome:28} {n}")
    classes = sorted({k for k, _ in by_class})
    for klass in classes:
        print(f"  {klass:20} " + ", ".join(f"{o}: {n}" for (k, o), n in sorted(by_class.items()) if k == klass))
    assert not {o for o in totals if o in DEFECTS} and not report["inputs changed"], report
