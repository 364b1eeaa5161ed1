"""The analysis cache: what one report contributes to one analysis (its per-report frame and the notes the
analysis raised on it), kept as a Parquet file so that the next call on the same export reads that instead of
the export.

An entry is found by a key over three things, so that a stale entry is never found:

* the **export's identity**: its resolved path, size, modification time and inode (for a ``parquetdir``
  folder, those of every table file), and the content of its ``.meta.json`` sidecar, which names ranks;
  a re-exported or edited file is a different export;
* the **per-report step**: the analysis function and every option it was given (a step that cannot be named
  so, e.g. a lambda, is not cached);
* **nsysan itself**: its version and the size and modification time of every module and SQL file, so that
  changed code (a development checkout) never reads the numbers of the old code.

A call over several reports also stores their stacked frame (tagged with each report's name and metadata) as
one entry whose key is made of the reports' own keys, names and metadata (:mod:`nsysan.engine`): the same
call again reads one file instead of one per report, and a change to any report changes the stack's key. A
stack larger than an eighth of the size bound is not stored (it would evict the entries it duplicates).

Entries are written to a temporary name and renamed, so readers see whole entries or none; an entry that
cannot be read is deleted and computed again. The folder is kept under a size bound by removing the entries
used least recently. Settings come from :func:`configure` or the environment:

``NSYSAN_CACHE_DIR``        the folder (default ``$XDG_CACHE_HOME/nsysan/analysis``, else ``~/.cache/...``)
``NSYSAN_CACHE_MAX_MB``     the size bound (default 2048)
``NSYSAN_NO_CACHE=1``       neither read nor write entries (``--no-cache`` on the command line)
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from nsysan.metadata import sidecar_path

SUFFIX = ".parquet"
NOTES_KEY = "nsysan_notes"
DEFAULT_MAX_MB = 2048
#: For :func:`configure`: drop this process's setting and follow the environment again.
FROM_ENVIRONMENT = "environment"


@dataclass(frozen=True)
class Settings:
    enabled: bool
    directory: Path
    max_bytes: int


_configured: dict[str, Any] = {}


def settings() -> Settings:
    """The settings in force: :func:`configure`'s, else the environment's, else the defaults."""
    env = os.environ
    enabled = _configured.get("enabled", env.get("NSYSAN_NO_CACHE", "").lower() in ("", "0", "false", "no"))
    directory = _configured.get("directory") or env.get("NSYSAN_CACHE_DIR") or (
        Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nsysan" / "analysis")
    max_mb = _configured.get("max_mb") or float(env.get("NSYSAN_CACHE_MAX_MB") or DEFAULT_MAX_MB)
    return Settings(bool(enabled), Path(directory).expanduser(), int(max_mb * 2**20))


def configure(*, enabled: bool | str | None = None, directory: str | os.PathLike | None = None,
              max_mb: float | None = None) -> None:
    """Set the cache's settings for this process (``None`` leaves one as it is, :data:`FROM_ENVIRONMENT`
    follows the environment again)."""
    for key, value in (("enabled", enabled), ("directory", directory), ("max_mb", max_mb)):
        if isinstance(value, str) and value == FROM_ENVIRONMENT:
            _configured.pop(key, None)
        elif value is not None:
            _configured[key] = value


@contextmanager
def disabled() -> Iterator[None]:
    """Neither read nor write entries inside the block."""
    before = dict(_configured)
    _configured["enabled"] = False
    try:
        yield
    finally:
        _configured.clear()
        _configured.update(before)


# -- keys -----------------------------------------------------------------------------------------------------

class Unnamed(Exception):
    """The step cannot be named by value (a lambda, a closure, an option without a stable text form)."""


def step_name(step: Callable[..., Any]) -> str:
    """A text that names ``step`` by value: the module-level function and its options, defaults included."""
    func, args, kwargs = step, (), {}
    while isinstance(func, functools.partial):
        args, kwargs = func.args + args, {**func.keywords, **kwargs}
        func = func.func
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}"
    if "<" in name or not name.startswith("nsysan."):
        raise Unnamed(name)
    options = {"args": [_plain(a) for a in args], "kwargs": {k: _plain(v) for k, v in sorted(kwargs.items())}}
    return name + json.dumps(options, sort_keys=True)


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data that equal options map to equally; :class:`Unnamed` for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [type(value).__name__, *(_plain(v) for v in value)]
    if isinstance(value, (set, frozenset)):
        return ["set", *sorted(json.dumps(_plain(v)) for v in value)]
    if isinstance(value, dict):
        return {"dict": [[_plain(k), _plain(v)] for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {type(value).__qualname__: {f.name: _plain(getattr(value, f.name))
                                           for f in dataclasses.fields(value)}}
    raise Unnamed(repr(value))


def export_identity(path: Path) -> list[Any]:
    """What changes whenever the export or its sidecar changes (see the module doc)."""
    path = path.resolve()
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    identity: list[Any] = [str(path)]
    for file in files:
        st = file.stat()
        identity.append([file.name, st.st_size, st.st_mtime_ns, st.st_ino])
    sidecar = sidecar_path(path)
    identity.append(hashlib.sha256(sidecar.read_bytes()).hexdigest() if sidecar.is_file() else None)
    return identity


@functools.cache
def code_fingerprint() -> str:
    """nsysan's version and the size and modification time of each of its modules and SQL files."""
    from nsysan import __version__

    package = Path(__file__).parent
    digest = hashlib.sha256(__version__.encode())
    for file in sorted(package.rglob("*")):
        if file.suffix in (".py", ".sql"):
            st = file.stat()
            digest.update(f"{file.relative_to(package)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def key(path: Path, step: Callable[..., Any]) -> str | None:
    """The entry key of ``step`` on the export ``path``; None when the step cannot be cached."""
    return keyer(step)(path)


def keyer(step: Callable[..., Any]) -> Callable[[Path], str | None]:
    """:func:`key` for one ``step`` and any export: the step is named once for all the exports of a call."""
    try:
        name = step_name(step)
    except Unnamed:
        return lambda path: None
    code = code_fingerprint()

    def key_of(path: Path) -> str:
        text = json.dumps([code, name, export_identity(path)], default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    return key_of


def stack_key(reports: list[list[Any]]) -> str:
    """The entry key of several reports' stacked frame: ``reports`` holds each report's own entry key, name and
    metadata, in order (:mod:`nsysan.engine`)."""
    return hashlib.sha256(json.dumps(["stack", *reports], default=str).encode()).hexdigest()


# -- entries --------------------------------------------------------------------------------------------------

def _entry(directory: Path, key: str) -> Path:
    return directory / key[:2] / f"{key}{SUFFIX}"


def lookup(key: str) -> tuple[pl.DataFrame, list[str]] | None:
    """The cached frame and notes of ``key``; None when there is none, or it was damaged (then removed)."""
    where = _entry(settings().directory, key)
    try:
        data = where.read_bytes()
    except OSError:  # none yet, or a cache folder that cannot be read: analyse the export
        return None
    try:
        # polars' own reader: pyarrow's would import pyarrow.dataset and pandas, most of a warm run's time.
        notes = json.loads(pl.read_parquet_metadata(data).get(NOTES_KEY, "[]"))
        frame = pl.read_parquet(data)
    except Exception:  # noqa: BLE001 - a damaged entry is never trusted, whatever its damage is
        where.unlink(missing_ok=True)
        return None
    try:
        os.utime(where)  # its modification time orders entries for eviction: least recently used go first
    except OSError:
        pass
    return frame, list(notes)


def store(key: str, frame: pl.DataFrame, notes: list[str]) -> None:
    """Write the entry (atomically); a cache that cannot be written is left alone, never an error."""
    where = _entry(settings().directory, key)
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=where.parent, prefix=f".{where.name}.", suffix=".tmp")
        os.close(fd)
        try:
            frame.write_parquet(temp, compression="zstd", metadata={NOTES_KEY: json.dumps(notes)})
            os.replace(temp, where)
        finally:
            Path(temp).unlink(missing_ok=True)
    except (OSError, pl.exceptions.PolarsError):  # polars reports a full disk as a ComputeError
        pass


def _entries(directory: Path) -> list[tuple[Path, os.stat_result]]:
    out = []
    for file in directory.glob(f"??/*{SUFFIX}"):
        try:
            out.append((file, file.stat()))
        except FileNotFoundError:  # removed by another process meanwhile
            continue
    return out


def prune() -> int:
    """Remove the least recently used entries until the folder is under its bound; returns how many went."""
    now = settings()
    entries = sorted(_entries(now.directory), key=lambda e: e[1].st_mtime_ns)
    total = sum(st.st_size for _, st in entries)
    removed = 0
    for file, st in entries:
        if total <= now.max_bytes:
            break
        file.unlink(missing_ok=True)
        total -= st.st_size
        removed += 1
    return removed


def info() -> dict[str, Any]:
    """The folder, whether the cache is on, its entries, their size and the bound."""
    now = settings()
    entries = _entries(now.directory)
    return {"directory": str(now.directory), "enabled": now.enabled, "entries": len(entries),
            "size_mb": round(sum(st.st_size for _, st in entries) / 2**20, 3),
            "max_mb": round(now.max_bytes / 2**20, 3)}


def clear() -> dict[str, Any]:
    """Remove every entry (and any half-written one); returns what went."""
    now = settings()
    entries = _entries(now.directory)
    for file, _ in entries:
        file.unlink(missing_ok=True)
    for temp in now.directory.glob("??/.*.tmp"):
        temp.unlink(missing_ok=True)
    return {"directory": str(now.directory), "removed": len(entries),
            "size_mb": round(sum(st.st_size for _, st in entries) / 2**20, 3)}
