"""Which NVTX ranges launched each GPU op — the rule every per-range GPU number rests on.

A GPU op belongs to a range when the CUDA API call that launched it lies inside the range on the same
thread (nsys's ``nvtx_gpu_proj`` rule), and to every range enclosing that one. An inequality join per thread
grows quadratically; instead each launch finds the latest range that started on its thread at or before the
call (an as-of join) and climbs that range's parent chain: for nested ranges, the ranges that contain the
call are exactly those ancestors. Start/end ranges that partially overlap ("cross") another range are not
reachable that way and are matched directly; they are rare.
"""
from __future__ import annotations

import polars as pl

from nsysan import intervals, quality
from nsysan.lazy import numpy as np
from nsysan.load import Report, derived
from nsysan.selection import DEFAULT, Selection, names_matching, warmup_ranges
from nsysan.sql import query

PAIR_SCHEMA = {"range_id": pl.Int64, "launch": pl.UInt32}
#: A globalTid divided by this is its process (the low 24 bits are the thread id).
PROCESS_BITS = 1 << 24
#: Launches climbed at a time by :func:`_climb`.
CLIMB_SLICE = 1 << 18


@derived
def nvtx_ranges(report: Report) -> pl.DataFrame:
    """Every NVTX range, read once per report for the nesting, the names and the latency trace: ``range_id``,
    ``name``, ``style``, ``start_ns``, ``end_ns``, ``same_thread``, ``global_tid``, ``pid``, ``tid``; in
    ``range_id`` order."""
    # Sorted here rather than by DuckDB, whose ORDER BY keeps ~100 bytes a range resident afterwards.
    return report.frame("SELECT range_id, name, style, start_ns, end_ns, same_thread, global_tid, pid, tid "
                        "FROM nvtx_ranges").sort("range_id")


@derived
def range_nesting(report: Report) -> pl.DataFrame:
    """Ranges that end on the thread that started them, with how they nest: ``range_id``, ``global_tid``,
    ``start_ns``, ``end_ns``, ``parent_id`` (null for outermost), ``level``, ``crossing``."""
    ranges = (nvtx_ranges(report).select("range_id", "global_tid", "start_ns", "end_ns", "same_thread")
              .filter(pl.col("same_thread")).drop("same_thread"))
    nesting = intervals.nest(ranges["global_tid"].to_numpy(), ranges["start_ns"].to_numpy(),
                             ranges["end_ns"].to_numpy())
    ids = ranges["range_id"].to_numpy()
    parent_ids = np.where(nesting.parent >= 0, ids[np.maximum(nesting.parent, 0)], -1)
    return ranges.with_columns(
        parent_id=pl.Series(parent_ids, dtype=pl.Int64).replace(-1, None),
        level=pl.Series(nesting.level, dtype=pl.Int64),
        crossing=pl.Series(nesting.crossing, dtype=pl.Boolean),
    )


@derived
def range_names(report: Report) -> pl.DataFrame:
    """Every NVTX range's ``range_id``, ``name`` and ``same_thread`` (it ended on the thread that started it)."""
    return nvtx_ranges(report).select("range_id", "name", "same_thread")


@derived
def launches(report: Report) -> pl.DataFrame:
    """Every GPU op with its launching call: ``correlation_id``, ``global_tid``, ``call_start``, ``call_end``,
    ``op_start``, ``op_end``."""
    return report.frame(query("launches"))


#: Which ranges a GPU op counts for: ``thread`` (nsys's rule: the launching call lies inside the range on the
#: range's own thread) or ``process`` (launched by any thread of the range's process while the range was open).
RULES = ("thread", "process")


@derived
def launch_pairs(report: Report, rule: str = "thread") -> pl.DataFrame:
    """:func:`launch_ranges` (or, for the ``process`` rule, :func:`process_launch_ranges`) of every op of the
    report (indices into :func:`launches`)."""
    pair = process_launch_ranges if rule == "process" else launch_ranges
    return pair(launches(report), range_nesting(report))


def launch_ranges(launched: pl.DataFrame, nesting: pl.DataFrame) -> pl.DataFrame:
    """Every (range, launch) pair where the launching call lies inside the range on the same thread.

    ``launched`` holds ``global_tid``, ``call_start`` and ``call_end`` (e.g. :func:`launches`); ``nesting``
    is :func:`range_nesting`. Columns: ``range_id`` and ``launch``, the row index into ``launched`` — only
    indices travel through the climb, so memory stays proportional to the pairs, not to the op columns.
    """
    return _climb(launched.select("global_tid", "call_start", "call_end").with_row_index("launch"), nesting)


def process_launch_ranges(launched: pl.DataFrame, nesting: pl.DataFrame) -> pl.DataFrame:
    """Every (range, launch) pair where the launching call lies inside the range and was made by any thread of
    the range's process (PyTorch launches backward kernels from its autograd thread, inside the main thread's
    ``backward`` range). Each launch is offered to the ranges of every thread of its process that has ranges,
    so an op counts for a range of each such thread that was open at the call (documented: it can count twice,
    e.g. for a prefetch thread's range and the main thread's batch)."""
    calls = (launched.select("global_tid", "call_start", "call_end").with_row_index("launch")
             .with_columns(_pid=pl.col("global_tid") // PROCESS_BITS))
    threads = nesting.select(_range_tid="global_tid").unique().with_columns(_pid=pl.col("_range_tid") // PROCESS_BITS)
    offered = calls.join(threads, on="_pid").select("launch", global_tid="_range_tid", call_start="call_start",
                                                     call_end="call_end")
    return _climb(offered, nesting)


def _climb(calls: pl.DataFrame, nesting: pl.DataFrame) -> pl.DataFrame:
    """The pairs of :func:`launch_ranges` for ``calls`` (``launch``, ``global_tid``, ``call_start``,
    ``call_end``): an as-of join per thread, then up each range's parent chain."""
    # Of ranges starting at the same instant on a thread the innermost; its ancestors hold the others.
    # (Each run's first row after a sort, not ``unique``: its hash table costs ~250 bytes a range.)
    new_start = pl.col("global_tid").ne_missing(pl.col("global_tid").shift(1)) | pl.col("start_ns").ne_missing(
        pl.col("start_ns").shift(1))
    starts = (nesting.select("global_tid", "start_ns", "end_ns", "range_id")
              .sort("global_tid", "start_ns", "end_ns", "range_id", descending=[False, False, False, True])
              .filter(new_start)
              .select("global_tid", "start_ns", candidate="range_id")
              .sort("start_ns"))
    ancestry = nesting.select(candidate="range_id", _start="start_ns", _end="end_ns", _parent="parent_id",
                              _crossing="crossing")
    found = []
    ordered = calls.sort("call_start")
    # In slices of launches: each climb step joins every launch still climbing with its candidate's row, and
    # those temporaries, not the pairs found, set the peak memory of a million-kernel report.
    for first in range(0, ordered.height, CLIMB_SLICE):
        climbing = (ordered.slice(first, CLIMB_SLICE)
                    .join_asof(starts, left_on="call_start", right_on="start_ns", by="global_tid",
                               strategy="backward", check_sortedness=False)
                    .select("launch", "call_start", "call_end", "candidate")
                    .filter(pl.col("candidate").is_not_null()))
        while climbing.height:
            climbing = climbing.join(ancestry, on="candidate", how="inner")
            contains = (pl.col("_start") <= pl.col("call_start")) & (pl.col("_end") >= pl.col("call_end"))
            found.append(climbing.filter(contains & ~pl.col("_crossing")).select(range_id="candidate",
                                                                                  launch="launch"))
            climbing = climbing.select("launch", "call_start", "call_end", candidate="_parent").filter(
                pl.col("candidate").is_not_null())
    crossing = nesting.filter(pl.col("crossing")).select("range_id", "global_tid", "start_ns", "end_ns")
    if crossing.height:
        found.append(_calls_inside(calls, crossing))
    if not found:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    return pl.concat([f.cast(PAIR_SCHEMA) for f in found])


def _calls_inside(calls: pl.DataFrame, ranges: pl.DataFrame) -> pl.DataFrame:
    """(range_id, launch) for every call lying inside one of ``ranges`` on the same thread, found by binary
    search over each thread's calls sorted by start: the work grows with the pairs found, not with calls x
    ranges (every range crosses its sibling where ranges touch end to start, as loops often make them)."""
    out = []
    calls = calls.sort("call_start")
    for (tid,), on_thread in ranges.group_by("global_tid"):
        mine = calls.filter(pl.col("global_tid") == tid)
        starts, ends = mine["call_start"].to_numpy(), mine["call_end"].to_numpy()
        lo = np.searchsorted(starts, on_thread["start_ns"].to_numpy(), side="left")
        hi = np.searchsorted(starts, on_thread["end_ns"].to_numpy(), side="right")
        counts = hi - lo
        which = np.repeat(np.arange(on_thread.height), counts)
        index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
        inside = ends[index] <= on_thread["end_ns"].to_numpy()[which]
        out.append(pl.DataFrame({"range_id": on_thread["range_id"].to_numpy()[which][inside],
                                 "launch": mine["launch"].to_numpy()[index][inside]}))
    return pl.concat(out)  # called with at least one range


def gather(launched: pl.DataFrame, pairs: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """``pairs`` with the chosen columns of the launch each pair points at."""
    return pairs.with_columns(launched[c].gather(pairs["launch"]) for c in columns)


@derived
def op_stages(report: Report) -> pl.DataFrame:
    """The innermost NVTX range that launched each GPU op: ``global_pid``, ``correlation_id``,
    ``stage_range_id``. Ops launched outside every range are absent.

    Same rule as the GPU projection of ranges: the launching CUDA call lies inside the range on the same
    thread; of those ranges the deepest one is the stage."""
    launched = launches(report)
    nesting = range_nesting(report)
    pairs = gather(launched, launch_pairs(report), "global_tid", "correlation_id")
    return (pairs.with_columns(global_pid=pl.col("global_tid") - pl.col("global_tid") % (1 << 24))
            .join(nesting.select("range_id", "level", "start_ns"), on="range_id")
            .sort("level", "start_ns", "range_id", descending=True)
            .unique(["global_pid", "correlation_id"], keep="first")
            .select("global_pid", "correlation_id", stage_range_id="range_id"))


def kept_ops(report: Report, ops: pl.DataFrame, select: Selection = DEFAULT) -> pl.DataFrame:
    """The rows of ``ops`` (GPU ops with ``global_pid`` and ``correlation_id``) that ``select`` keeps: ops
    launched inside a warm-up range (rule 1 of :mod:`nsysan.selection`, same-thread rule) are left out."""
    if not select.exclude_within:
        return ops
    ranges = range_names(report).filter(pl.col("same_thread")).select("range_id", range="name")
    if ranges.is_empty() or not report.has("CUPTI_ACTIVITY_KIND_RUNTIME"):
        if ops.height:
            quality.warn_unselectable(report, select.exclude_within, ranges.height)
        return ops
    if not names_matching(ranges["range"], select.exclude_within):
        return ops
    trace = ranges.join(range_nesting(report).select("range_id", "parent_id"), on="range_id")
    warm = warmup_ranges(trace, select.exclude_within)
    staged = op_stages(report).join(warm, left_on="stage_range_id", right_on="range_id", how="semi")
    return ops.join(staged.select("global_pid", "correlation_id"), on=["global_pid", "correlation_id"], how="anti")
