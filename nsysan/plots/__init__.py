"""Figures from the tidy frames nsysan's analyses return: matplotlib Figures in one seaborn theme.

Every function takes the frame an analysis returns (columns documented in docs/metrics.md), selects, orders
and draws its columns, and returns a headless :class:`matplotlib.figure.Figure` (no pyplot state; save it
with ``fig.savefig(path)``). Nothing here computes a metric; the few re-arrangements a figure needs are
pure polars functions in :mod:`nsysan.plots.frames` (:func:`transfer_share`, :func:`model_shape`,
:func:`busy_breakdown`; importing them does not import matplotlib) and
:func:`nsysan.timeline` prepares one report's ops and ranges for :func:`gpu_timeline`. Distributed runs:
:func:`skew_chart` (from :func:`nsysan.collective_calls`) and :func:`comm_overlap_chart` (from :func:`nsysan.comm`).

    from nsysan import plots
    plots.stage_breakdown(latency_by_model).savefig("stages.png")
"""
from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives. Names are imported on first use, so that ``nsysan.plots.frames`` can be
#: used without importing matplotlib (the report's own process never does).
SOURCES = {
    "bandwidth_chart": "bandwidth", "busy_breakdown": "frames", "busy_idle": "utilization",
    "comm_overlap_chart": "distributed", "comparison_forest": "compare", "gpu_timeline": "timeline",
    "idle_gaps": "utilization", "model_shape": "frames", "notes": "style", "numa_penalty_heatmap": "numa",
    "scaling": "model_scaling", "skew_chart": "distributed", "stage_breakdown": "stages",
    "top_kernels_chart": "utilization", "transfer_share": "frames",
}
__all__ = sorted(SOURCES)


def __getattr__(name: str) -> Any:
    module = SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *SOURCES})


def load_all() -> None:
    """Import every figure module now (a worker does, before its first job arrives)."""
    for name in SOURCES:
        __getattr__(name)
