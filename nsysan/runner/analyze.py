"""``analyze=true``: export a study's reports and compute the stage latency per model, exactly as

    nsysan export <study>/nsys_reports
    nsysan latency --by-model <study>/nsys_reports

(the same library functions; the default instance selection leaves warm-up out and pools numbered ranges).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nsysan.errors import NsysanError
from nsysan.runner.plan import Study

BY = ("model", "variant")
LATENCY_COLUMNS = ("model", "variant", "range", "instances", "range_ms_mean", "range_ms_p95", "gpu_proj_ms_mean",
                   "gpu_proj_ms_p95", "gpu_busy_ms_mean", "gpu_ops_total")


def analyze(study: Study, nsys: str, message: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """Export the study's reports, then latency by model. Returns (a summary for experiment_summary.json,
    the latency DataFrame or None)."""
    import nsysan
    from nsysan.render import write_atomic

    reports = study.reports
    selection = nsysan.Selection()
    info: dict[str, Any] = {"by": list(BY), "selection": selection.describe()}
    if not any(reports.glob("*.nsys-rep")):
        info["skipped"] = "no reports to analyse"
        return info, None
    try:
        exported = nsysan.export([reports], types="sqlite", nsys=nsys)
    except NsysanError as e:
        info["skipped"] = f"export failed: {e}"
        return info, None
    info["export"] = exported.counts
    for item in exported.failed:
        message(f"export: {item.line()}")
    try:
        result = nsysan.latency(reports, by=BY, select=selection)
    except NsysanError as e:
        info["skipped"] = f"latency failed: {e}"
        return info, None
    info["failures"] = [f.reason for f in result.failures]
    for line in (*result.notes, *info["failures"]):
        message(f"latency: {line}")
    table = result.frame
    if not table.is_empty():
        csv = study.dir / "latency_by_model.csv"
        write_atomic(csv, table.write_csv().encode())
        info["latency_csv"] = str(csv)
    return info, table
