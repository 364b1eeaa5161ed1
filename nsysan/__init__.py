"""nsysan: answers from Nsight Systems profiles of GPU ML workloads.

    import nsysan
    report = nsysan.open("run.sqlite")                  # one export (SQLite file or parquetdir folder)
    trace = nsysan.range_trace(report)                  # one row per NVTX range instance
    nsysan.latency_summary(trace.with_columns(report=pl.lit(report.name)))

    runs = nsysan.collect(["outputs/"])                 # many exports with run metadata
    nsysan.latency(runs, by=["model"], exclude_within="warmup_*")
"""
from __future__ import annotations

from nsysan.analyses.bandwidth import bandwidth, bandwidth_summary, copy_size_histogram, copy_trace, op_stages
from nsysan.analyses.compare import compare, stage_samples
from nsysan.analyses.kernels import kernel_durations, kernel_summary
from nsysan.analyses.latency import exclude_instances, latency_summary, merge_numbered_names, range_trace
from nsysan.analyses.numa import NumaNotComparable, numa_heatmap, numa_pairs, numa_penalty
from nsysan.analyses.throughput import batch_trace, throughput, throughput_summary
from nsysan.analyses.utilization import gpu_utilization, top_kernels, utilization, utilization_summary
from nsysan.api import kernels, latency, latency_trace
from nsysan.collection import Collection, collect, find_exports
from nsysan.errors import MissingDataError, NotAnExportError, NsysanError
from nsysan.export import ExportResult, export
from nsysan.load import Report, open
from nsysan.sample import sample_paths

__version__ = "0.1.0"

__all__ = [
    "bandwidth", "bandwidth_summary", "batch_trace", "collect", "Collection", "compare",
    "copy_size_histogram", "copy_trace", "exclude_instances", "export", "ExportResult", "find_exports",
    "gpu_utilization", "kernel_durations", "kernel_summary", "kernels", "latency", "latency_summary",
    "latency_trace", "merge_numbered_names", "MissingDataError", "NotAnExportError", "NsysanError",
    "numa_heatmap", "numa_pairs", "numa_penalty", "NumaNotComparable", "op_stages", "open", "range_trace",
    "Report", "sample_paths", "stage_samples", "throughput", "throughput_summary", "top_kernels",
    "utilization", "utilization_summary",
]
