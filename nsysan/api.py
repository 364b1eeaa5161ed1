"""nsysan's library API: every analysis of many reports, one function each, all of one shape.

    import nsysan
    result = nsysan.latency("outputs/", by=["model"])      # paths, folders, a Collection or open Reports
    result.frame                                            # the tidy polars DataFrame
    result.failures, result.notes                           # reports that could not be read, and why; remarks

Every function takes the reports first, then keyword-only options; ``by`` names the grouping keys
(``report``, run metadata such as ``model`` or ``numa``, and per-row keys such as ``device_id``), checked
before any report is read; ``select`` is the :class:`~nsysan.selection.Selection` of instances (default:
warm-up left out, numbered ranges pooled; ``Selection.everything()`` keeps all, as ``nsys stats`` does).
Each returns a :class:`~nsysan.engine.Result`. Column definitions and units are in docs/metrics.md and
docs/library.md: times in integer ns (``_ns``) or ms (``_ms``), bandwidth in GB/s (``_gbps``), shares in %.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal

import polars as pl

from nsysan import defaults
from nsysan.analyses import bandwidth as _bandwidth
from nsysan.analyses import comm as _comm
from nsysan.analyses import compare as _compare
from nsysan.analyses import inventory as _inventory
from nsysan.analyses import kernels as _kernels
from nsysan.analyses import latency as _latency
from nsysan.analyses import numa as _numa
from nsysan.analyses import throughput as _throughput
from nsysan.analyses import timeline as _timeline
from nsysan.analyses import utilization as _utilization
from nsysan.analyses.kernels import KernelNames
from nsysan.attribution import RULES
from nsysan.collection import Collection, Failure, collect
from nsysan.engine import Progress, Result, Runs, check_keys, inputs, pooled
from nsysan.errors import NsysanError
from nsysan.load import Report, open
from nsysan.sample import sample_paths
from nsysan.selection import DEFAULT, Selection

Keys = Sequence[str]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise NsysanError(message)


def _by(by: Keys) -> tuple[str, ...]:
    _check(not isinstance(by, str), f"by takes a sequence of keys, e.g. by=[{by!r}], not the string {by!r}")
    return tuple(by)


def _names(names: str) -> KernelNames:
    _check(names in _kernels.KERNEL_NAMES, f"names must be one of {', '.join(_kernels.KERNEL_NAMES)}, not {names!r}")
    return names  # type: ignore[return-value]


# -- stage latency ------------------------------------------------------------------------------------------
def _attribution(rule: str) -> str:
    _check(rule in RULES, f"attribution must be one of {', '.join(RULES)}, not {rule!r}")
    return rule


def latency_trace(runs: Runs, *, select: Selection = DEFAULT, attribution: str = "thread",
                  progress: Progress = None) -> Result:
    """One row per NVTX range instance that ``select`` keeps, with its CPU time and the GPU work it launched
    (names as recorded). Columns: those of :func:`nsysan.analyses.latency.range_trace`, ``report``, ``rank``,
    ``device_id`` and run metadata. ``attribution`` as in :func:`latency`."""
    return pooled(runs, partial(_latency.instances, select=select, attribution=_attribution(attribution)), by=(),
                  progress=progress)


def latency(runs: Runs, *, by: Keys = ("report",), select: Selection = DEFAULT, attribution: str = "thread",
            progress: Progress = None) -> Result:
    """Stage latency: per range name within each ``by`` group, CPU time and projected GPU time statistics
    over the selected instances (:func:`nsysan.analyses.latency.latency_summary` columns). GPU projection
    follows ``nsys stats -r nvtx_gpu_proj_sum`` with ``attribution="thread"`` (an op counts for the ranges
    of the thread that launched it); ``"process"`` counts the ops any thread of the range's process launched
    while the range was open (PyTorch's autograd thread, for ``backward``), which can count an op for ranges
    of two threads (a prefetch thread's range and the main thread's batch)."""
    by = _by(by)
    return pooled(runs, partial(_latency.instances, select=select, attribution=_attribution(attribution)),
                  pool=partial(_latency.latency_summary, by=by, select=select), by=by,
                  row_keys=_latency.ROW_KEYS, progress=progress)


# -- kernels and copies ---------------------------------------------------------------------------------------
def kernels(runs: Runs, *, by: Keys = ("report",), names: str = "demangled", select: Selection = DEFAULT,
            progress: Progress = None) -> Result:
    """Time per kernel name within each ``by`` group, as ``nsys stats -r cuda_gpu_kern_sum`` counts it, for
    the kernels ``select`` keeps (:func:`nsysan.analyses.kernels.kernel_summary` columns). ``names``:
    demangled | short | mangled."""
    by = _by(by)
    return pooled(runs, partial(_kernels.kernel_durations, names=_names(names), select=select),
                  pool=partial(_kernels.kernel_summary, by=by), by=by, row_keys=_kernels.ROW_KEYS,
                  progress=progress)


def _copies(runs: Runs, *, by: tuple[str, ...], by_stage: bool, include_memset: bool, select: Selection,
            pool: Any, progress: Progress) -> Result:
    return pooled(runs, partial(_bandwidth.copy_trace, include_memset=include_memset, by_stage=by_stage,
                                select=select),
                  pool=pool, by=by, row_keys=_bandwidth.ROW_KEYS, progress=progress)


def bandwidth(runs: Runs, *, by: Keys = ("report",), by_stage: bool = False, include_memset: bool = True,
              tiny_bytes: int = defaults.TINY_BYTES, select: Selection = DEFAULT, progress: Progress = None) -> Result:
    """Copy bandwidth per direction and memory kinds within each ``by`` group (and NVTX stage with
    ``by_stage``), with flags for what looks wrong (:func:`nsysan.analyses.bandwidth.bandwidth_summary`
    columns). ``bandwidth_gbps`` = bytes / summed copy time, as nsys counts them."""
    by = _by(by)
    _check(isinstance(tiny_bytes, int) and tiny_bytes > 0, f"tiny_bytes must be a positive integer, not {tiny_bytes!r}")
    pool = partial(_bandwidth.bandwidth_summary, by=by, by_stage=by_stage, tiny_bytes=tiny_bytes, select=select)
    return _copies(runs, by=by, by_stage=by_stage, include_memset=include_memset, select=select, pool=pool,
                   progress=progress)


def copy_sizes(runs: Runs, *, by: Keys = ("report",), by_stage: bool = False, include_memset: bool = True,
               select: Selection = DEFAULT, progress: Progress = None) -> Result:
    """Copy sizes in power-of-two buckets per direction and memory kinds within each ``by`` group
    (:func:`nsysan.analyses.bandwidth.copy_size_histogram` columns)."""
    by = _by(by)
    pool = partial(_bandwidth.copy_size_histogram, by=by, by_stage=by_stage, select=select)
    return _copies(runs, by=by, by_stage=by_stage, include_memset=include_memset, select=select, pool=pool,
                   progress=progress)


# -- GPU utilization ------------------------------------------------------------------------------------------
def _utilization_parts(runs: Runs, *, by: tuple[str, ...], window: str, by_stream: bool, names: str,
                       select: Selection, pool: Any, progress: Progress) -> Result:
    _check(isinstance(window, str) and bool(window), "window must be capture, batches or an NVTX range name/glob")
    return pooled(runs, partial(_utilization.gpu_utilization, window=window, by_stream=by_stream, select=select,
                                names=_names(names)),
                  pool=pool, by=by, row_keys=_utilization.ROW_KEYS, progress=progress)


def utilization(runs: Runs, *, by: Keys = ("report",), window: str = "capture", by_stream: bool = False,
                names: str = "short", short_gap_ns: int = defaults.SHORT_GAP_NS,
                launch_gap_ns: int = defaults.LAUNCH_GAP_NS, select: Selection = DEFAULT,
                progress: Progress = None) -> Result:
    """GPU busy and idle time over a window per GPU (and stream with ``by_stream``) within each ``by`` group:
    busy time is a union of op intervals, never a sum; idle gaps; launch-bound or not
    (:func:`nsysan.analyses.utilization.utilization_summary` columns). ``window``: ``capture``, ``batches``
    (the measured batches) or an NVTX range name or glob (its selected instances)."""
    by = _by(by)
    _check(short_gap_ns >= 0 and launch_gap_ns >= 0, "gap thresholds must be >= 0 ns")
    pool = partial(_utilization.utilization_summary, by=by, short_gap_ns=short_gap_ns, launch_gap_ns=launch_gap_ns)
    return _utilization_parts(runs, by=by, window=window, by_stream=by_stream, names=names, select=select, pool=pool,
                              progress=progress)


def top_kernels(runs: Runs, *, by: Keys = ("report",), window: str = "capture", by_stream: bool = False,
                names: str = "short", top: int = 10, select: Selection = DEFAULT, progress: Progress = None) -> Result:
    """The ``top`` kernels by time inside the window per GPU (and stream) within each ``by`` group, with
    their share of the kernel busy time (:func:`nsysan.analyses.utilization.top_kernels` columns; 0: all)."""
    by = _by(by)
    _check(isinstance(top, int) and top >= 0, f"top must be a whole number >= 0, not {top!r}")
    pool = partial(_utilization.top_kernels, by=by, top=top)
    return _utilization_parts(runs, by=by, window=window, by_stream=by_stream, names=names, select=select, pool=pool,
                              progress=progress)


# -- throughput ----------------------------------------------------------------------------------------------
def throughput(runs: Runs, *, by: Keys = ("report",), batch_size: int | None = None, select: Selection = DEFAULT,
               progress: Progress = None) -> Result:
    """Samples/s and batch latency over the measured batches within each ``by`` group; batch sizes from each
    run's metadata unless ``batch_size`` is given (:func:`nsysan.analyses.throughput.throughput_summary`
    columns). The ranks of a distributed run step together: steps/s per run (or per rank with ``by`` holding
    ``rank``), samples/s summed over ranks. A group whose batch size is unknown gets a note and no samples/s."""
    by = _by(by)
    _check(batch_size is None or (isinstance(batch_size, int) and batch_size > 0),
           f"batch_size must be a positive integer, not {batch_size!r}")
    result = pooled(runs, partial(_throughput.batch_trace, select=select),
                    pool=partial(_throughput.throughput_summary, by=by, batch_size=batch_size), by=by,
                    row_keys=_throughput.ROW_KEYS, progress=progress, pools_ranks=True)
    if result.frame.is_empty():
        return result
    notes = [f"{', '.join(f'{k}={row[k]}' for k in by)}: {row['note']}; samples/s not computed"
             for row in result.frame.filter(pl.col("note").is_not_null()).iter_rows(named=True)]
    return result.with_frame(result.frame, *notes)


# -- comparisons ----------------------------------------------------------------------------------------------
def _settings(**options: Any) -> _compare.Settings:
    return _compare.Settings(**options)


def compare(runs: Runs, *, by: Keys = ("report",), baseline: Mapping[str, Any] | None = None,
            select: Selection = DEFAULT, confidence: float = defaults.CONFIDENCE,
            resamples: int = defaults.RESAMPLES, seed: int = defaults.SEED, block: int | Literal["auto"] = "auto",
            adjust: Literal["bonferroni", "none"] = "bonferroni", min_effect_pct: float = defaults.MIN_EFFECT_PCT,
            min_instances: int = defaults.MIN_INSTANCES, progress: Progress = None) -> Result:
    """Every group of ``by`` against its baseline group, per stage and metric: value, ratio, seeded bootstrap
    CI and a verdict (:func:`nsysan.analyses.compare.compare_groups` columns). ``baseline`` names values of
    some ``by`` keys (``{"numa": 0}``); without it the first group is the baseline."""
    by = _by(by)
    settings = _settings(confidence=confidence, resamples=resamples, seed=seed, block=block, adjust=adjust,
                         min_effect_pct=min_effect_pct, min_instances=min_instances)
    unknown = [k for k in baseline or {} if k not in by]
    _check(not unknown, f"baseline key(s) {', '.join(unknown)} must be among the grouping keys ({', '.join(by)})")
    result = pooled(runs, partial(_compare.stage_observations, select=select),
                    pool=partial(_compare.compare_groups, by=by, baseline=baseline, settings=settings), by=by,
                    row_keys=_compare.ROW_KEYS, progress=progress)
    frame = result.frame
    if not frame.is_empty() and frame.select(by).unique().height < 2:
        return result.with_frame(frame, f"only one group ({', '.join(by)}): nothing to compare with")
    return result


def numa(runs: Runs, *, local_key: str = _numa.LOCAL_KEY, ignore: Keys = (), select: Selection = DEFAULT,
         confidence: float = defaults.CONFIDENCE, resamples: int = defaults.RESAMPLES, seed: int = defaults.SEED,
         block: int | Literal["auto"] = "auto", adjust: Literal["bonferroni", "none"] = "bonferroni",
         min_effect_pct: float = defaults.MIN_EFFECT_PCT, min_instances: int = defaults.MIN_INSTANCES,
         progress: Progress = None) -> Result:
    """NUMA penalty (remote node / local node - 1) per model and stage with bootstrap CIs, most
    NUMA-sensitive first (:func:`nsysan.analyses.numa.numa_penalty` columns). Runs that share every
    metadata key but the NUMA node are paired. When the runs cannot show a penalty (one node, no pair) the
    frame is empty and a note says why."""
    ignore = _by(ignore)
    settings = _settings(confidence=confidence, resamples=resamples, seed=seed, block=block, adjust=adjust,
                         min_effect_pct=min_effect_pct, min_instances=min_instances)
    found = inputs(runs)
    check_keys(ignore, found.collection)
    samples = pooled(found, partial(_compare.stage_observations, select=select), by=(), progress=progress)
    if samples.frame.is_empty():
        return samples
    try:
        penalty = _numa.numa_penalty(samples.frame, local_key=local_key, ignore=ignore, settings=settings)
    except _numa.NumaNotComparable as e:
        return samples.with_frame(pl.DataFrame(), str(e))
    layout = _numa.numa_pairs(samples.frame, local_key=local_key, ignore=ignore)
    notes = []
    if (layout["local_basis"] == _numa.ASSUMED_LOWEST).any():
        notes.append(f"no {local_key} in the run metadata of some groups: the lowest NUMA node of each such group "
                     "is taken as local (see the local_basis column)")
    notes += [f"{report} not paired: {note}" for report, note in
              layout.filter(pl.col("role") == "unpaired").select("report", "note").iter_rows()]
    return samples.with_frame(penalty, *notes)


def numa_heatmap(penalty: Result | pl.DataFrame, *, metric: str = "range_ms", statistic: str = "mean",
                 direction: str | None = None) -> pl.DataFrame:
    """The :func:`numa` penalty as a heatmap-ready frame: one row per pair group and remote node, one column
    per stage (:func:`nsysan.analyses.numa.numa_heatmap`)."""
    frame = penalty.frame if isinstance(penalty, Result) else penalty
    return _numa.numa_heatmap(frame, metric=metric, statistic=statistic, direction=direction)


# -- distributed runs ---------------------------------------------------------------------------------------
def _message_bytes(message_bytes: Any) -> Any:
    sizes = message_bytes.values() if isinstance(message_bytes, Mapping) else [message_bytes]
    _check(message_bytes is None or all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes),
           f"message_bytes must be a positive integer or a mapping of collective to one, not {message_bytes!r}")
    return message_bytes


def comm(runs: Runs, *, by: Keys = ("report",), by_stage: bool = False, message_bytes: int | Mapping[str, int] | None
         = None, select: Selection = DEFAULT, progress: Progress = None) -> Result:
    """NCCL communication per rank and collective (and an ``all`` row per rank) within each ``by`` group: calls,
    communication time, the compute time on the rank's device, their overlap and the exposed communication,
    and bus bandwidth where message sizes are known (:func:`nsysan.analyses.comm.comm_summary` columns)."""
    by = _by(by)
    return pooled(runs, partial(_comm.comm_overlap, select=select, by_stage=by_stage,
                                message_bytes=_message_bytes(message_bytes)),
                  pool=partial(_comm.comm_summary, by=by, by_stage=by_stage), by=by,
                  row_keys=("pid", "device_id", "collective", *(["stage"] if by_stage else [])), progress=progress,
                  pools_ranks=True)


def skew(runs: Runs, *, by: Keys = ("report",), per_step: bool = False, message_bytes: int | Mapping[str, int] |
         None = None, select: Selection = DEFAULT, progress: Progress = None) -> Result:
    """How the ranks arrive at each collective call, matched across ranks: per rank and collective the arrival
    lateness, the time spent waiting for the others and how often the rank came last
    (:func:`nsysan.analyses.comm.skew_summary` columns); with ``per_step``, the straggler of every step
    (:func:`nsysan.analyses.comm.skew_steps`)."""
    by = _by(by)
    pool = _comm.skew_steps if per_step else _comm.skew_summary
    return pooled(runs, partial(_comm.collective_calls, select=select, message_bytes=_message_bytes(message_bytes)),
                  pool=partial(pool, by=by), by=by, row_keys=("pid", "collective", "step"), progress=progress,
                  pools_ranks=True)


def collective_calls(runs: Runs, *, message_bytes: int | Mapping[str, int] | None = None,
                     select: Selection = DEFAULT, progress: Progress = None) -> Result:
    """Every NCCL call of every report, one row per call and rank, matched across ranks
    (:func:`nsysan.analyses.comm.collective_calls` columns): what :func:`skew` and the skew plots summarise."""
    return pooled(runs, partial(_comm.collective_calls, select=select, message_bytes=_message_bytes(message_bytes)),
                  by=(), progress=progress)


# -- one report's timeline -----------------------------------------------------------------------------------
def timeline(runs: Runs, *, window: Any = ("batch_*", 3), select: Selection = DEFAULT, names: str = "short",
             threads: str = "launching", progress: Progress = None) -> Result:
    """The GPU ops and NVTX ranges of one window of each report, one row each, every op with the thread that
    launched it: what :func:`nsysan.plots.gpu_timeline` draws (:func:`nsysan.analyses.timeline.timeline_frame`
    columns and windows, e.g. ``("batch_*", 3)``: three measured batches)."""
    _check(threads in ("launching", "all"), f"threads must be 'launching' or 'all', not {threads!r}")
    return pooled(runs, partial(_timeline.timeline_frame, window=window, select=select, names=_names(names),
                                threads=threads), by=(), progress=progress)


# -- what the exports hold --------------------------------------------------------------------------------------
def info(runs: Runs, *, progress: Progress = None) -> Result:
    """One row per report: nsys version, export schema, and how many ranges, kernels, copies, memsets, CUDA
    calls and GPUs it holds (:func:`nsysan.analyses.inventory.inventory` columns)."""
    return pooled(runs, _inventory.inventory, by=(), progress=progress)


#: The many-report analyses, by name: what the command line, the report and the contract tests run over.
ANALYSES = {f.__name__: f for f in (latency_trace, latency, kernels, bandwidth, copy_sizes, utilization, top_kernels,
                                     throughput, compare, numa, comm, skew, collective_calls, timeline, info)}

__all__ = ["ANALYSES", "Collection", "Failure", "Report", "Result", "Selection", "bandwidth", "collect",
           "collective_calls", "comm", "compare", "copy_sizes", "info", "kernels", "latency", "latency_trace", "numa",
           "numa_heatmap", "open", "sample_paths", "skew", "throughput", "timeline", "top_kernels", "utilization"]
