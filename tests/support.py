"""Helpers several test modules share: running nsys stats live."""
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
