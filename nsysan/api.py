"""Collection-level entry points: run an analysis over many reports and summarise with metadata keys.

These are what the CLI calls; each returns a tidy DataFrame (see the analysis modules for columns).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from nsysan.analyses.kernels import KernelNames, kernel_durations, kernel_summary
from nsysan.analyses.latency import exclude_instances, latency_summary, merge_numbered_names, range_trace
from nsysan.collection import Collection

Progress = Callable[[Path], None] | None


def latency_trace(runs: Collection, *, exclude_within: str | Sequence[str] | None = None, skip_first: int = 0,
                  merge_numbered: bool = False, progress: Progress = None) -> pl.DataFrame:
    """Per-instance NVTX range trace of every report, tagged with ``report`` and metadata columns."""
    trace = runs.concat(range_trace, progress)
    if trace.is_empty():
        return trace
    trace = exclude_instances(trace, within=exclude_within, skip_first=skip_first)
    return merge_numbered_names(trace) if merge_numbered else trace


def latency(runs: Collection, *, by: Sequence[str] = ("report",), exclude_within: str | Sequence[str] | None = None,
            skip_first: int = 0, merge_numbered: bool = False, progress: Progress = None) -> pl.DataFrame:
    """Stage latency per range name, grouped by ``by`` (``report`` or metadata keys such as ``model``)."""
    trace = latency_trace(runs, exclude_within=exclude_within, skip_first=skip_first,
                          merge_numbered=merge_numbered, progress=progress)
    if trace.is_empty():
        return trace
    runs.check_keys(by)
    return latency_summary(trace, by=tuple(by))


def kernels(runs: Collection, *, by: Sequence[str] = ("report",), names: KernelNames = "demangled",
            progress: Progress = None) -> pl.DataFrame:
    """Kernel time per kernel name, grouped by ``by``."""
    durations = runs.concat(lambda report: kernel_durations(report, names=names), progress)
    if durations.is_empty():
        return durations
    runs.check_keys(by)
    return kernel_summary(durations, by=tuple(by))
