"""nsysan: answers from Nsight Systems profiles of GPU ML workloads.

    import nsysan
    report = nsysan.open("run.sqlite")                  # one export (SQLite file or parquetdir folder)
    trace = nsysan.range_trace(report)                  # one row per NVTX range instance
    nsysan.latency_summary(trace.with_columns(report=pl.lit(report.name)))

    runs = nsysan.collect(["outputs/"])                 # many exports with run metadata
    nsysan.latency(runs, by=["model"], exclude_within="warmup_*")
"""
from __future__ import annotations

from nsysan.analyses.kernels import kernel_durations, kernel_summary
from nsysan.analyses.latency import exclude_instances, latency_summary, merge_numbered_names, range_trace
from nsysan.api import kernels, latency, latency_trace
from nsysan.collection import Collection, collect, find_exports
from nsysan.errors import MissingDataError, NotAnExportError, NsysanError
from nsysan.load import Report, open
from nsysan.sample import sample_paths

__version__ = "0.1.0"

__all__ = [
    "Collection", "MissingDataError", "NotAnExportError", "NsysanError", "Report", "collect", "exclude_instances",
    "find_exports", "kernel_durations", "kernel_summary", "kernels", "latency", "latency_summary", "latency_trace",
    "merge_numbered_names", "open", "range_trace", "sample_paths",
]
