"""Helpers several test modules share: running nsys stats live, NVTX ranges per process of an export, and
the torch the distributed workloads need."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

#: A folder where nsys stats output is kept per (export content, reports, format, nsys): set by
#: scripts/mutation, whose every mutant re-runs the same reports on the same files. nsys's numbers depend on
#: the export only, never on nsysan, so reusing them changes nothing about what is compared.
CACHE_ENV = "NSYSAN_NSYS_STATS_CACHE"


def nsys_stats(nsys: str, export: Path, reports: tuple[str, ...], folder: Path, *, fmt: str = "csv",
               schema_overrides: dict | None = None) -> dict[str, pl.DataFrame]:
    """Run ``nsys stats -r REPORTS --format FMT`` on one SQLite export; return each report's table.

    The export is copied into ``folder`` first so that nsys never touches the files under test."""
    folder.mkdir(parents=True, exist_ok=True)
    cache = _cache_dir(nsys, export, reports, fmt)
    if cache is not None and all((cache / _csv_name(r)).exists() for r in reports):
        return {r: pl.read_csv(cache / _csv_name(r), schema_overrides=schema_overrides, infer_schema_length=None)
                for r in reports}
    source = folder / export.name
    shutil.copyfile(export, source)
    prefix = folder / "stats"
    args = [nsys, "stats", "-r", ",".join(reports), "--format", fmt, "--force-overwrite", "true",
            "-o", str(prefix), str(source)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    out = {}
    for report in reports:
        csv = Path(f"{prefix}_{_csv_name(report)}")
        if not csv.exists():
            pytest.fail(f"nsys stats wrote no {csv.name} (exit {done.returncode}): {' '.join(args)}\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        out[report] = pl.read_csv(csv, schema_overrides=schema_overrides, infer_schema_length=None)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(csv, cache / _csv_name(report))
    return out



def nvtx_ranges_by_pid(export: Path) -> dict[int, dict[str, int]]:
    """Push/pop NVTX ranges of the default domain in an nsys SQLite export, counted per process and name.

    Read with plain sqlite3, as nsys wrote them: the process id is bits 24-47 of globalTid."""
    import sqlite3
    from collections import Counter, defaultdict

    query = """
        SELECT (e.globalTid >> 24) & 0xFFFFFF AS pid, COALESCE(e.text, s.value) AS name
        FROM NVTX_EVENTS AS e LEFT JOIN StringIds AS s ON s.id = e.textId
        WHERE e.eventType = (SELECT id FROM ENUM_NSYS_EVENT_TYPE WHERE name = 'NvtxPushPopRange')
          AND COALESCE(e.domainId, 0) = 0"""
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    assert captured_nvtx(export), f"{export}: no NVTX_EVENTS table: nsys captured no NVTX range at all"
    with sqlite3.connect(f"file:{export}?mode=ro", uri=True) as db:
        for pid, name in db.execute(query):
            counts[pid][name] += 1
    return {pid: dict(c) for pid, c in counts.items()}


#: What nsys says when it lost its own session (its agent), not the program's doing.
NSYS_SESSION_LOST = ("Connection to Agent lost", "Local Endpoint is not available")


def captured_nvtx(export: Path) -> bool:
    """Whether an nsys SQLite export holds any NVTX event (nsys writes no NVTX_EVENTS table without one).

    On the shared development machine, with other nsys sessions running at the same time, nsys now and then
    loses a session: it stops with one of :data:`NSYS_SESSION_LOST`, or its report holds no NVTX range of any
    process although the program pushed them. Tests of multi-process captures retry such a capture once."""
    import sqlite3

    if not export.is_file() or export.stat().st_size == 0:
        return False
    with sqlite3.connect(f"file:{export}?mode=ro", uri=True) as db:
        return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'NVTX_EVENTS'").fetchone() is not None


def require_torch() -> None:
    """The distributed workloads need torch: under CI a missing torch fails the test; elsewhere it skips."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        return
    message = "torch not installed: run scripts/test (it installs torch==2.13.0, a CPU build)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message, allow_module_level=True)


def _csv_name(report: str) -> str:
    return f"{report.replace(':', '_')}.csv"


def _cache_dir(nsys: str, export: Path, reports: tuple[str, ...], fmt: str) -> Path | None:
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    key = hashlib.sha256(Path(export).read_bytes())
    key.update(repr((str(nsys), sorted(reports), fmt)).encode())
    return Path(root) / key.hexdigest()[:32]


class Lazy(dict):
    """A mapping whose values are computed on first access (``compute(key)``) and kept: session fixtures over
    many exports then cost only the exports that the selected tests ask for."""

    def __init__(self, keys, compute):
        super().__init__()
        self._keys, self._compute = list(keys), compute

    def __missing__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        value = self[key] = self._compute(key)
        return value

    def keys(self):  # noqa: D102 - every key, computed or not
        return list(self._keys)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)
