"""Figures from the tidy frames nsysan's analyses return: matplotlib Figures in one seaborn theme.

Every function takes the frame an analysis returns (columns documented in docs/metrics.md), selects, orders
and draws its columns, and returns a headless :class:`matplotlib.figure.Figure` (no pyplot state; save it
with ``fig.savefig(path)``). Nothing here computes a metric; the few re-arrangements a figure needs are
pure functions next to it (:func:`transfer_share`, :func:`model_shape`, :func:`busy_breakdown`) and
:func:`nsysan.timeline` prepares one report's ops and ranges for :func:`gpu_timeline`. Distributed runs:
:func:`skew_chart` (from :func:`nsysan.collective_calls`) and :func:`comm_overlap_chart` (from :func:`nsysan.comm`).

    from nsysan import plots
    plots.stage_breakdown(latency_by_model).savefig("stages.png")
"""
from nsysan.plots.bandwidth import bandwidth_chart
from nsysan.plots.compare import comparison_forest
from nsysan.plots.distributed import comm_overlap_chart, skew_chart
from nsysan.plots.numa import numa_penalty_heatmap
from nsysan.plots.scaling import model_shape, scaling, transfer_share
from nsysan.plots.stages import stage_breakdown
from nsysan.plots.style import notes
from nsysan.plots.timeline import gpu_timeline
from nsysan.plots.utilization import busy_breakdown, busy_idle, idle_gaps, top_kernels_chart

__all__ = [
    "bandwidth_chart", "busy_breakdown", "busy_idle", "comm_overlap_chart", "comparison_forest", "gpu_timeline", "idle_gaps",
    "model_shape", "notes", "numa_penalty_heatmap", "scaling", "skew_chart", "stage_breakdown",
    "top_kernels_chart", "transfer_share",
]
