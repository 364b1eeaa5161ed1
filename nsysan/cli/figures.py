"""What ``nsysan plot KIND`` draws: for each kind, the library analysis it runs and the plot function that draws
its frame (the plots compute nothing themselves)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from nsysan.errors import NsysanError

KINDS = {
    "stages": "stage breakdown per group (nsysan latency)",
    "scaling": "latency, throughput and transfer share against model depth/width (--x)",
    "compare": "forest plot of the changes against --baseline, with CIs (nsysan compare)",
    "numa": "NUMA penalty heatmap (nsysan numa; --metric)",
    "bandwidth": "copy bandwidth per direction and memory kind, with copy sizes",
    "busy": "GPU busy and idle shares over --window (nsysan utilization)",
    "gaps": "distribution of the GPU's idle gaps over --window",
    "kernels": "top kernels over --window (nsysan utilization --top)",
    "timeline": "GPU timeline of one report (--window, default three measured batches)",
    "skew": "arrival skew per NCCL call and rank (distributed runs; nsysan skew)",
    "comm": "NCCL communication overlapped and exposed per rank (distributed runs; nsysan comm)",
}
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def timeline_window(text: str | None, patterns: tuple[str, ...]) -> list[Any]:
    """``--window`` of the timeline as nsysan.timeline windows to try in turn: ``capture``; ``GLOB:COUNT[:SKIP]``;
    ``START_NS,END_NS``; a glob (all its measured instances); default three measured batches of the first batch
    pattern the report has, else (no such range, or no NVTX at all: a CUDA-only capture) the whole capture."""
    if not text:
        # The capture is the last resort, as in nsysan report: an export without batch ranges still has GPU rows.
        return [*((p, 3) for p in patterns), "capture"]
    if text == "capture":
        return ["capture"]
    if "," in text:
        lo, _, hi = text.partition(",")
        try:
            return [(int(lo), int(hi))]
        except ValueError:
            raise NsysanError(f"--window START_NS,END_NS takes whole nanoseconds, not {text!r}") from None
    glob, *numbers = text.split(":")
    try:
        counts = [int(n) for n in numbers]
    except ValueError:
        raise NsysanError(f"--window takes capture, GLOB, GLOB:COUNT[:SKIP] or START_NS,END_NS, not {text!r}") from None
    if len(counts) > 2 or any(n < 0 for n in counts) or (counts and counts[0] < 1):
        raise NsysanError(f"--window takes GLOB:COUNT[:SKIP] with COUNT >= 1, not {text!r}")
    return [(glob, *counts)] if counts else [glob]


@dataclass
class Request:
    """One ``nsysan plot``: the reports and the options every kind may read."""

    runs: Any
    keys: tuple[str, ...] | None
    select: Any
    stats: dict[str, Any]
    baseline: dict[str, Any] | None
    window: str | None
    metric: str
    x: str | None
    progress: Any = None

    def by(self) -> tuple[str, ...]:
        """``--by``, else the grouping the report would choose for these runs."""
        if self.keys:
            return self.keys
        from nsysan.report.data import auto_by

        return auto_by(self.runs)

    @property
    def gpu_window(self) -> str:
        return self.window or "batches"


def figure_for(kind: str, request: Request) -> tuple[Any, Any]:
    """(the matplotlib Figure, or None when the analysis found nothing to draw; the Result it was drawn from).
    ``kind`` is one of :data:`KINDS` (``nsysan plot`` checks it before reading any report)."""
    return _DRAW[kind](request)


def _drawn(result: Any, draw: Callable[[Any], Any]) -> tuple[Any, Any]:
    return (draw(result.frame) if not result.frame.is_empty() else None), result


def _stages(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    result = nsysan.latency(r.runs, by=r.by(), select=r.select, progress=r.progress)
    return _drawn(result, lambda frame: plots.stage_breakdown(frame, by=list(r.by())))


def _scaling(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    chosen = tuple(dict.fromkeys(["model", *r.by()]))
    result = nsysan.latency(r.runs, by=chosen, select=r.select, progress=r.progress)
    rate = nsysan.throughput(r.runs, by=chosen, select=r.select)
    if result.frame.is_empty():
        return None, result
    x = r.x
    if x is None:
        from nsysan.plots.frames import scaling_axis

        x = scaling_axis(result.frame) or "depth"
    return plots.scaling(result.frame, rate.frame if not rate.frame.is_empty() else None, x=x), result


def _compare(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    baseline = r.baseline
    if baseline is None:
        from nsysan.report.data import auto_baseline

        baseline = auto_baseline(r.runs, r.by())
    result = nsysan.compare(r.runs, by=r.by(), baseline=baseline, select=r.select, progress=r.progress, **r.stats)
    return _drawn(result, plots.comparison_forest)


def _numa(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    result = nsysan.numa(r.runs, select=r.select, progress=r.progress, **r.stats)
    return plots.numa_penalty_heatmap(result, metric=r.metric), result


def _bandwidth(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    result = nsysan.bandwidth(r.runs, by=r.by(), select=r.select, progress=r.progress)
    sizes = nsysan.copy_sizes(r.runs, by=r.by(), select=r.select)
    return _drawn(result, lambda frame: plots.bandwidth_chart(frame, sizes.frame if not sizes.frame.is_empty()
                                                              else None))


def _busy(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    result = nsysan.utilization(r.runs, by=r.by(), window=r.gpu_window, select=r.select, progress=r.progress)
    return _drawn(result, plots.busy_idle)


def _kernels(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    result = nsysan.top_kernels(r.runs, by=r.by(), window=r.gpu_window, select=r.select, progress=r.progress)
    return _drawn(result, plots.top_kernels_chart)


def _gaps(r: Request) -> tuple[Any, Any]:
    from functools import partial

    from nsysan import plots
    from nsysan.analyses.utilization import gpu_utilization
    from nsysan.engine import pooled

    # Every gap of every report (no pooling by group): the plot draws their distribution per group itself.
    result = pooled(r.runs, partial(gpu_utilization, window=r.gpu_window, select=r.select), by=(),
                    progress=r.progress)
    return _drawn(result, lambda frame: plots.idle_gaps(frame, by=list(r.by())))


def _timeline(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    result = None
    for attempt in timeline_window(r.window, r.select.batches):
        result = nsysan.timeline(r.runs.paths[0], window=attempt, select=r.select, progress=r.progress)
        if not result.frame.is_empty():
            break
    return _drawn(result, plots.gpu_timeline)


def _skew(r: Request) -> tuple[Any, Any]:
    import polars as pl

    import nsysan
    from nsysan import plots

    result = nsysan.collective_calls(r.runs, select=r.select, progress=r.progress)
    first_report = pl.col("report") == pl.col("report").first()
    return _drawn(result, lambda frame: plots.skew_chart(frame.filter(first_report)))


def _comm(r: Request) -> tuple[Any, Any]:
    import nsysan
    from nsysan import plots

    result = nsysan.comm(r.runs, select=r.select, progress=r.progress)
    return _drawn(result, plots.comm_overlap_chart)


_DRAW: dict[str, Callable[[Request], tuple[Any, Any]]] = {
    "stages": _stages, "scaling": _scaling, "compare": _compare, "numa": _numa, "bandwidth": _bandwidth,
    "busy": _busy, "gaps": _gaps, "kernels": _kernels, "timeline": _timeline, "skew": _skew, "comm": _comm,
}
