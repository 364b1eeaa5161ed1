"""Communication in distributed runs: NCCL kernels per rank, how much of them compute hides, and who waits for
whom (docs/metrics.md, "Communication" and "Skew").

* **communication** = NCCL kernels (:mod:`nsysan.nccl`), by collective; **compute** = every other kernel on the
  rank's device. ``comm_ns`` and ``compute_ns`` are unions of kernel intervals; ``overlap_ns`` their
  intersection; ``exposed_comm_ns`` = communication not hidden by compute.
* **warm-up**: a kernel belongs to the step (a rank's outermost range named like the selection's batches or
  warm-up patterns, on any of its threads) whose CPU span holds the kernel's start; kernels of warm-up steps are
  left out. NCCL kernels are often launched by another thread than the one that opened the step (DDP's
  all-reduce comes from PyTorch's autograd thread), so the step is found by time, not by launching thread.
* **calls across ranks**: NCCL requires every rank of a communicator to issue its collectives in the same order
  on its communicator's stream. A call is therefore matched across ranks by (the rank's n-th NCCL stream, in
  order of first use; the k-th NCCL kernel on it). A rank's NCCL kernel starts when the rank reaches the
  collective and waits inside it until every rank has arrived: ``late_ns`` = own start - earliest start of the
  call, ``wait_ns`` = last start - own start (clipped to the kernel), and the last to arrive is the straggler.
* **bus bandwidth** (NCCL's definitions, PERFORMANCE.md): algbw = message bytes / time from the last arrival to
  the last end; busbw = algbw x 2(n-1)/n for AllReduce, (n-1)/n for AllGather and ReduceScatter, 1 for Broadcast.
  Message sizes come from NCCL's NVTX payload when the export holds it, else from ``message_bytes``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import warnings

import polars as pl

from nsysan import intervals, nccl, ranks
from nsysan.analyses.latency import range_trace
from nsysan.errors import NsysanWarning
from nsysan.load import Report, derived
from nsysan.selection import DEFAULT, Selection, names_matching, nested_in_named
from nsysan.stats import NS_PER_MS

ALL = "all"
CALL_COLUMNS = ("call", "collective", "rank", "pid", "device_id", "stream_id", "start_ns", "end_ns", "step",
                "late_ns", "wait_ns", "last", "ranks", "message_bytes", "algbw_gbps", "busbw_gbps")
MessageBytes = int | Mapping[str, int] | None


# -- NCCL kernels of the measured steps ---------------------------------------------------------------------------
@derived
def steps(report: Report, select: Selection = DEFAULT) -> pl.DataFrame:
    """Each process's outermost ranges named like the selection's batches or warm-up patterns: ``pid``,
    ``step`` (range name), ``warmup``, ``start_ns``, ``end_ns``."""
    if not report.has("NVTX_EVENTS"):
        return pl.DataFrame(schema={"pid": pl.Int64, "step": pl.String, "warmup": pl.Boolean, "start_ns": pl.Int64,
                                    "end_ns": pl.Int64})
    trace = range_trace(report)
    names = names_matching(trace["range"], [*select.batches, *select.exclude_within])
    outer = nested_in_named(trace, names, include_self=False).filter(~pl.col("nested"))
    chosen = trace.filter(pl.col("range").is_in(names)).join(outer, on="range_id", how="semi")
    warm = names_matching(chosen["range"], select.exclude_within)
    return chosen.select(pl.col("pid").cast(pl.Int64), step="range", warmup=pl.col("range").is_in(warm),
                         start_ns="start_ns", end_ns=pl.col("start_ns") + pl.col("range_ns")).sort("pid", "start_ns")


@derived
def kernels_by_step(report: Report, select: Selection = DEFAULT) -> pl.DataFrame:
    """Every kernel outside warm-up steps: ``pid``, ``device_id``, ``stream_id``, ``start_ns``, ``end_ns``,
    ``collective`` (null for compute), ``step`` (null outside every step), ``global_pid``, ``correlation_id``."""
    report.require("CUPTI_ACTIVITY_KIND_KERNEL", purpose="communication analysis")
    kernels = report.frame("SELECT start_ns, end_ns, device_id, stream_id, (global_pid >> 24) & 16777215 AS pid, "
                           "global_pid, correlation_id, coalesce(short_name, name) AS kernel FROM kernels").with_columns(
        pl.col("pid").cast(pl.Int64), collective=nccl.collective(pl.col("kernel"))).drop("kernel")
    spans = steps(report, select=select)
    placed = (kernels.sort("start_ns")
              .join_asof(spans.sort("start_ns").select("pid", "step", "warmup", step_start="start_ns",
                                                       step_end="end_ns"),
                         left_on="start_ns", right_on="step_start", by="pid", strategy="backward",
                         check_sortedness=False)
              .with_columns(inside=pl.col("step_end").is_not_null() & (pl.col("start_ns") <= pl.col("step_end"))))
    placed = placed.with_columns(step=pl.when(pl.col("inside")).then(pl.col("step")),
                                 warmup=pl.col("inside") & pl.col("warmup").fill_null(False))
    return placed.filter(~pl.col("warmup")).select("pid", "device_id", "stream_id", "start_ns", "end_ns",
                                                    "collective", "step", "global_pid", "correlation_id")


# -- communication and its overlap with compute -------------------------------------------------------------------
def comm_overlap(report: Report, *, select: Selection = DEFAULT, by_stage: bool = False,
                 message_bytes: MessageBytes = None) -> pl.DataFrame:
    """Per rank (``pid`` and ``device_id``) and collective (and an ``all`` row), of one report: ``collective``,
    ``calls``, ``comm_ns``, ``compute_ns``, ``overlap_ns``, ``exposed_comm_ns``, and for bus bandwidth
    ``sized_bytes`` / ``sized_transfer_ns`` (message bytes and transfer time of the calls whose size is known,
    see :func:`collective_calls`; for busbw ``sized_bus_bytes`` / ``sized_bus_ns``, over the calls that have
    one); with ``by_stage`` also per ``stage`` (the rank's ranges by name, each instance from its start to its
    end; no bus bandwidth then)."""
    frame = _comm_overlap(report, select, by_stage)
    sized = _sized(_matched(kernels_by_step(report, select=select), report, message_bytes))
    if by_stage:  # a call's bandwidth is not split between the stages its kernel overlaps
        sized = sized.clear()
    return frame.join(sized, on=["pid", "collective"], how="left")


def _sized(calls: pl.DataFrame) -> pl.DataFrame:
    """Per rank and collective (and ``all``): bytes and transfer times of the calls whose size is known."""
    sized = calls.filter(pl.col("algbw_gbps").is_not_null())
    both = pl.concat([sized, sized.with_columns(collective=pl.lit(ALL))])
    return both.group_by("pid", "collective").agg(
        pl.col("message_bytes").sum().alias("sized_bytes"),
        (pl.col("message_bytes") / pl.col("algbw_gbps")).sum().alias("sized_transfer_ns"),
        # A call only one rank made has no bus bandwidth: neither its bytes nor its time count for busbw.
        pl.col("message_bytes").filter(pl.col("busbw_gbps").is_not_null()).sum().alias("sized_bus_bytes"),
        (pl.col("message_bytes") / pl.col("busbw_gbps")).sum().alias("sized_bus_ns"))


def _no_nccl(report: Report, kernels: pl.DataFrame) -> None:
    if kernels.filter(pl.col("collective").is_not_null()).is_empty():
        warnings.warn(NsysanWarning(f"{report.path}: no NCCL kernels outside warm-up: no communication to "
                                    "analyse (a single-GPU run, or NCCL not traced: profile with -t cuda)"),
                      stacklevel=3)


def _comm_overlap(report: Report, select: Selection, by_stage: bool) -> pl.DataFrame:
    kernels = kernels_by_step(report, select=select)
    _no_nccl(report, kernels)
    stage_spans = _stage_spans(report, select) if by_stage else {}
    rows = []
    for (pid, device), own in kernels.filter(pl.col("collective").is_not_null()).group_by(
            "pid", "device_id", maintain_order=True):
        compute = kernels.filter((pl.col("device_id") == device) & pl.col("collective").is_null())
        compute_spans = intervals.merge(compute["start_ns"].to_numpy(), compute["end_ns"].to_numpy())
        windows = stage_spans.get(pid, {}) if by_stage else {None: None}
        for stage, window in windows.items():
            for name, calls in [(ALL, own), *own.group_by("collective", maintain_order=True)]:
                label = name if isinstance(name, str) else name[0]
                rows.append({"pid": pid, "device_id": device, **({"stage": stage} if by_stage else {}),
                             "collective": label, **_overlap(calls, compute_spans, window)})
    schema = {"pid": pl.Int64, "device_id": pl.Int64, **({"stage": pl.String} if by_stage else {}),
              "collective": pl.String, "calls": pl.Int64, "comm_ns": pl.Int64, "compute_ns": pl.Int64,
              "overlap_ns": pl.Int64, "exposed_comm_ns": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _overlap(calls: pl.DataFrame, compute: intervals.Spans, window: intervals.Spans | None) -> dict[str, int]:
    starts, ends = calls["start_ns"].to_numpy(), calls["end_ns"].to_numpy()
    comm = intervals.merge(starts, ends)
    if window is not None:
        comm, compute = intervals.intersect(comm, window), intervals.intersect(compute, window)
        count = int(intervals.overlaps(starts, ends, window).sum())
    else:
        count = calls.height
    comm_ns, overlap_ns = intervals.length(comm), intervals.length(intervals.intersect(comm, compute))
    return {"calls": count, "comm_ns": comm_ns, "compute_ns": intervals.length(compute), "overlap_ns": overlap_ns,
            "exposed_comm_ns": comm_ns - overlap_ns}


def _stage_spans(report: Report, select: Selection) -> dict[int, dict[str, intervals.Spans]]:
    """{pid: {stage name: span set of its selected instances}} for every range of every process."""
    from nsysan.selection import pool_names, select_instances

    trace = pool_names(select_instances(range_trace(report), select), select)
    out: dict[int, dict[str, intervals.Spans]] = {}
    for (pid, name), rows in trace.group_by("pid", "range", maintain_order=True):
        out.setdefault(int(pid), {})[name] = intervals.merge(rows["start_ns"].to_numpy(),
                                                              (rows["start_ns"] + rows["range_ns"]).to_numpy())
    return out


def comm_summary(frame: pl.DataFrame, *, by: Sequence[str] = ("report",), by_stage: bool = False) -> pl.DataFrame:
    """:func:`comm_overlap` rows pooled per (``by`` keys, rank, device, [stage], collective), in ms:
    ``calls``, ``comm_ms``, ``compute_ms``, ``overlap_ms``, ``exposed_comm_ms``, ``exposed_pct`` (exposed / comm),
    ``algbw_gbps`` and ``busbw_gbps`` over the calls whose message size is known (null otherwise)."""
    keys = list(dict.fromkeys([*by, "rank", "device_id", *(["stage"] if by_stage else []), "collective"]))
    out = frame.group_by(keys).agg(pl.col("calls").sum(), *[
        (pl.col(c).sum() / NS_PER_MS).alias(c.replace("_ns", "_ms"))
        for c in ("comm_ns", "compute_ns", "overlap_ns", "exposed_comm_ns")],
        *[pl.col(c).sum() for c in ("sized_bytes", "sized_transfer_ns", "sized_bus_bytes", "sized_bus_ns")])
    out = out.with_columns(
        exposed_pct=pl.when(pl.col("comm_ms") > 0).then(100 * pl.col("exposed_comm_ms") / pl.col("comm_ms")),
        algbw_gbps=pl.when(pl.col("sized_bytes") > 0).then(pl.col("sized_bytes") / pl.col("sized_transfer_ns")),
        busbw_gbps=pl.when(pl.col("sized_bus_bytes") > 0).then(pl.col("sized_bus_bytes") / pl.col("sized_bus_ns")),
    ).drop("sized_bytes", "sized_transfer_ns", "sized_bus_bytes", "sized_bus_ns")
    return out.sort([*keys[:-1], pl.col("collective") != ALL, "collective"], nulls_last=True)


# -- calls across ranks -------------------------------------------------------------------------------------------
def collective_calls(report: Report, *, select: Selection = DEFAULT, message_bytes: MessageBytes = None
                     ) -> pl.DataFrame:
    """Every NCCL call of one report matched across its ranks (module doc): one row per call and rank with
    :data:`CALL_COLUMNS`. ``call`` numbers the calls in order; ``step`` is the rank's step holding the call;
    ``ranks`` how many ranks took part; bandwidths are null when the message size is unknown."""
    kernels = kernels_by_step(report, select=select)
    _no_nccl(report, kernels)
    return _matched(kernels, report, message_bytes)


def _matched(kernels: pl.DataFrame, report: Report, message_bytes: MessageBytes) -> pl.DataFrame:
    kernels = (kernels.filter(pl.col("collective").is_not_null())
               .join(nccl.message_sizes(report).rename({"message_bytes": "_recorded"}),
                     on=["global_pid", "correlation_id"], how="left"))
    rank_of = dict(ranks.processes(report).select("pid", "rank").iter_rows())
    first_use = kernels.group_by("pid", "stream_id").agg(pl.col("start_ns").min().alias("_first"))
    kernels = (kernels.join(first_use, on=["pid", "stream_id"])
               .with_columns(_lane=pl.col("_first").rank("dense").over("pid").cast(pl.Int64) - 1)
               .sort("start_ns")
               .with_columns(_k=pl.int_range(pl.len()).over("pid", "_lane"), rank=pl.col("pid").replace_strict(
                   rank_of, default=None, return_dtype=pl.Int64)))
    calls = kernels.with_columns(
        _first_start=pl.col("start_ns").min().over("_lane", "_k"),
        _last_start=pl.col("start_ns").max().over("_lane", "_k"),
        _last_end=pl.col("end_ns").max().over("_lane", "_k"),
        ranks=pl.len().over("_lane", "_k").cast(pl.Int64),
    )
    calls = calls.with_columns(
        call=pl.struct("_lane", "_k").rank("dense").cast(pl.Int64) - 1,
        late_ns=pl.col("start_ns") - pl.col("_first_start"),
        wait_ns=(pl.col("_last_start") - pl.col("start_ns")).clip(0, pl.col("end_ns") - pl.col("start_ns")),
        last=(pl.col("start_ns") == pl.col("_last_start")) & (pl.col("ranks") > 1),
        # NCCL's own record of the size first; the caller's for calls it did not record.
        message_bytes=pl.coalesce(pl.col("_recorded").max().over("_lane", "_k"),
                                  _message_bytes(pl.col("collective"), message_bytes)),
    )
    transfer = pl.col("_last_end") - pl.col("_last_start")
    algbw = pl.when(transfer > 0).then(pl.col("message_bytes") / transfer)
    factor = pl.struct("collective", "ranks").map_elements(
        lambda r: nccl.bus_factor(r["collective"], r["ranks"]), return_dtype=pl.Float64)
    calls = calls.with_columns(algbw_gbps=algbw, busbw_gbps=algbw * factor)
    return calls.sort("call", "rank").select(CALL_COLUMNS)


def _message_bytes(collective: pl.Expr, given: MessageBytes) -> pl.Expr:
    if given is None:
        return pl.lit(None, pl.Int64)
    if isinstance(given, Mapping):
        return collective.replace_strict(dict(given), default=None, return_dtype=pl.Int64)
    return pl.lit(int(given), pl.Int64)


def skew_summary(calls: pl.DataFrame, *, by: Sequence[str] = ("report",)) -> pl.DataFrame:
    """Per (``by`` keys, rank, collective) and an ``all`` row per rank: ``calls``, ``arrival_late_ms_p50``,
    ``arrival_late_ms_p95``, ``wait_ms_total``, ``straggler_calls`` (calls this rank arrived last at), and, when
    message sizes are known, ``message_bytes`` (mean), ``algbw_gbps`` and ``busbw_gbps`` (each over the calls that
    have it: total bytes over total transfer time; a call only one rank made has no busbw)."""
    both = pl.concat([calls, calls.with_columns(collective=pl.lit(ALL))])
    keys = list(dict.fromkeys([*by, "rank", "collective"]))
    late_ms = pl.col("late_ns") / NS_PER_MS
    sized = pl.col("algbw_gbps").is_not_null()
    out = both.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("calls"),
        late_ms.quantile(0.5, interpolation="linear").alias("arrival_late_ms_p50"),
        late_ms.quantile(0.95, interpolation="linear").alias("arrival_late_ms_p95"),
        (pl.col("wait_ns").sum() / NS_PER_MS).alias("wait_ms_total"),
        pl.col("last").sum().cast(pl.Int64).alias("straggler_calls"),
        pl.col("message_bytes").filter(sized).mean().alias("message_bytes"),
        _pooled_bandwidth("algbw_gbps"), _pooled_bandwidth("busbw_gbps"),
    )
    return out.sort([*keys[:-1], pl.col("collective") != ALL, "collective"], nulls_last=True)


def _pooled_bandwidth(bw: str) -> pl.Expr:
    """A bandwidth over several calls, of the calls that have it (a call of one rank has an algbw but no busbw):
    their bytes over their summed transfer times."""
    having = pl.col(bw).is_not_null()
    return pl.when(having.any()).then(pl.col("message_bytes").filter(having).sum()
                                      / (pl.col("message_bytes") / pl.col(bw)).filter(having).sum()).alias(bw)


def skew_steps(calls: pl.DataFrame, *, by: Sequence[str] = ("report",)) -> pl.DataFrame:
    """Per (``by`` keys, step): ``calls``, ``straggler_rank`` (the rank that arrived last at most of the step's
    calls; ties go to the larger total lateness), ``straggler_calls``, ``straggler_late_ms_total`` (its summed
    lateness in the step) and ``max_late_ms`` (the worst single arrival)."""
    keys = [*by, "step"]
    per_rank = calls.filter(pl.col("step").is_not_null()).group_by([*keys, "rank"]).agg(
        pl.col("last").sum().alias("_lasts"), pl.col("late_ns").sum().alias("_late"),
        pl.col("late_ns").max().alias("_max"), pl.col("call").n_unique().alias("_calls"))
    ranked = per_rank.sort([*keys, "_lasts", "_late"], descending=[False] * len(keys) + [True, True])
    return ranked.group_by(keys, maintain_order=True).agg(
        pl.col("_calls").max().cast(pl.Int64).alias("calls"),
        pl.col("rank").first().alias("straggler_rank"),
        pl.col("_lasts").first().cast(pl.Int64).alias("straggler_calls"),
        (pl.col("_late").first() / NS_PER_MS).alias("straggler_late_ms_total"),
        (pl.col("_max").max() / NS_PER_MS).alias("max_late_ms"),
    ).sort(*by, pl.col("step").str.extract(r"(\d+)$").cast(pl.Int64, strict=False), "step")


__all__ = ["ALL", "CALL_COLUMNS", "collective_calls", "comm_overlap", "comm_summary", "kernels_by_step",
           "skew_steps", "skew_summary", "steps"]

