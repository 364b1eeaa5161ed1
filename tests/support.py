"""Helpers several test modules share: running nsys stats live."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest


def nsys_stats(nsys: str, export: Path, reports: tuple[str, ...], folder: Path, *, fmt: str = "csv",
               schema_overrides: dict | None = None) -> dict[str, pl.DataFrame]:
    """Run ``nsys stats -r REPORTS --format FMT`` on one SQLite export; return each report's table.

    The export is copied into ``folder`` first so that nsys never touches the files under test."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / export.name
    shutil.copyfile(export, source)
    prefix = folder / "stats"
    args = [nsys, "stats", "-r", ",".join(reports), "--format", fmt, "--force-overwrite", "true",
            "-o", str(prefix), str(source)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    out = {}
    for report in reports:
        csv = Path(f"{prefix}_{report.replace(':', '_')}.csv")
        if not csv.exists():
            pytest.fail(f"nsys stats wrote no {csv.name} (exit {done.returncode}): {' '.join(args)}\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        out[report] = pl.read_csv(csv, schema_overrides=schema_overrides, infer_schema_length=None)
    return out
