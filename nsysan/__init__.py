"""nsysan: answers from Nsight Systems profiles of GPU ML workloads.

    import nsysan
    result = nsysan.latency("outputs/", by=["model"])   # per-stage latency pooled per model
    result.frame, result.failures, result.notes
    report = nsysan.open("run.sqlite")                   # one export (SQLite file or parquetdir folder)
    nsysan.latency_trace(report).frame                   # one row per NVTX range instance

The public API is :mod:`nsysan.api` (docs/library.md). Importing nsysan is cheap: the analyses (and with
them polars and DuckDB) load on first use, so the experiment runner works where only its own dependencies
are installed.
"""
from __future__ import annotations

import importlib
from typing import Any

from nsysan.errors import MissingDataError, NotAnExportError, NsysanError, NsysanWarning

__version__ = "0.2.0"

_LAZY = {
    **dict.fromkeys(("ANALYSES", "bandwidth", "collect", "collective_calls", "comm", "compare", "copy_sizes", "info",
                     "kernels", "latency", "latency_trace", "numa", "numa_heatmap", "open", "sample_paths", "skew",
                     "throughput", "timeline", "top_kernels", "utilization"), "nsysan.api"),
    "Collection": "nsysan.collection", "Failure": "nsysan.collection",
    "Report": "nsysan.load", "Result": "nsysan.engine", "Selection": "nsysan.selection",
    "export": "nsysan.exporter", "ExportResult": "nsysan.exporter",
}

__all__ = [
    "ANALYSES", "Collection", "ExportResult", "Failure", "MissingDataError", "NotAnExportError", "NsysanError",
    "NsysanWarning", "Report", "Result", "Selection", "__version__", "bandwidth", "collect", "collective_calls", "comm",
    "compare", "copy_sizes", "export", "info", "kernels", "latency", "latency_trace", "numa", "numa_heatmap", "open",
    "sample_paths", "skew", "throughput", "timeline", "top_kernels", "utilization",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nsysan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
