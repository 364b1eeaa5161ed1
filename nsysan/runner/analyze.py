"""``analyze=true``: export a study's reports and compute the stage latency per model, as

    nsysan export <study>/nsys_reports
    nsysan latency --by-model --exclude-within 'warmup_*' --merge-numbered <study>/nsys_reports

Where nsysan's analysis dependencies (polars, duckdb) are not installed (a GPU machine with the standalone
runner) the reports are still exported to SQLite with nsys itself, and the latency table is left for a machine
that has them.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nsysan.errors import NsysanError
from nsysan.runner.plan import Study

BY = ("model", "variant")
EXCLUDE_WITHIN = "warmup_*"
LATENCY_COLUMNS = ("model", "variant", "range", "instances", "range_ms_mean", "range_ms_p95", "gpu_proj_ms_mean",
                   "gpu_proj_ms_p95", "gpu_busy_ms_mean", "gpu_ops_total")
EXPORT_TIMEOUT_S = 1800.0


def can_analyse() -> str | None:
    """None when polars and duckdb are installed, else the name of the missing package."""
    for name in ("polars", "duckdb"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def export_plain(reports: Path, nsys: str, message: Callable[[str], None]) -> dict[str, int]:
    """``nsys export --type sqlite`` for each report without an SQLite export at least as new; atomic renames."""
    from nsysan import nsys_tool

    counts = {"total": 0, "converted": 0, "up_to_date": 0, "failed": 0}
    for report in sorted(reports.glob("*.nsys-rep")):
        counts["total"] += 1
        target = report.with_name(report.name.removesuffix(".nsys-rep") + ".sqlite")
        if target.exists() and target.stat().st_mtime >= report.stat().st_mtime:
            counts["up_to_date"] += 1
            continue
        tmp = target.with_name(f"{target.name}.runner-{os.getpid()}.tmp")
        done = nsys_tool.run([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "-o", tmp, report],
                             timeout=EXPORT_TIMEOUT_S)
        if done.returncode == 0 and tmp.is_file():
            os.replace(tmp, target)
            counts["converted"] += 1
        else:
            tmp.unlink(missing_ok=True)
            counts["failed"] += 1
            message(f"export: {report.name}: nsys export failed (exit {done.returncode}): {done.message()}")
    return counts


def analyze(study: Study, nsys: str, message: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """Export the study's reports, then latency by model. Returns (a summary for experiment_summary.json,
    the latency DataFrame or None)."""
    reports = study.reports
    info: dict[str, Any] = {"by": list(BY), "exclude_within": EXCLUDE_WITHIN, "merge_numbered": True}
    if not any(reports.glob("*.nsys-rep")):
        info["skipped"] = "no reports to analyse"
        return info, None
    missing = can_analyse()
    if missing:
        info["export"] = export_plain(reports, nsys, message)
        info["skipped"] = (f"latency not computed: {missing} is not installed here; run "
                           f"`nsysan latency --by-model --exclude-within '{EXCLUDE_WITHIN}' --merge-numbered "
                           f"{reports}` where nsysan is installed")
        return info, None
    import nsysan
    from nsysan.render import write_atomic

    try:
        result = nsysan.export([reports], types="sqlite", nsys=nsys)
    except NsysanError as e:
        info["skipped"] = f"export failed: {e}"
        return info, None
    info["export"] = result.counts
    for item in result.failed:
        message(f"export: {item.line()}")
    runs = nsysan.collect([reports])
    try:
        table = nsysan.latency(runs, by=list(BY), exclude_within=EXCLUDE_WITHIN, merge_numbered=True)
    except NsysanError as e:
        info["skipped"] = f"latency failed: {e}"
        return info, None
    info["failures"] = [f"{f.path}: {f.reason}" for f in runs.failures]
    for failure in runs.failures:
        message(f"latency: {failure.reason}")
    if not table.is_empty():
        csv = study.dir / "latency_by_model.csv"
        write_atomic(csv, table.write_csv().encode())
        info["latency_csv"] = str(csv)
    return info, table
