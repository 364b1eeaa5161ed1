"""The GPU timeline of one report as data: the ops and NVTX ranges of a window, each op with the thread that
launched it (``nsysan.timeline``; drawn by :func:`nsysan.plots.gpu_timeline`).

Filtering happens inside DuckDB, so a window of a million-kernel export brings only what it shows into Python
(the SQLite tables are still scanned: the scanner cannot seek); kernel names travel as string ids, looked up
once each. Ops are matched to their launching call by ``correlationId`` within the process, as
:mod:`nsysan.attribution` does.
"""
from __future__ import annotations

import polars as pl

from nsysan.analyses.kernels import KernelNames
from nsysan.attribution import range_nesting
from nsysan.errors import MissingDataError
from nsysan.lazy import numpy as np
from nsysan.load import Report
from nsysan.selection import DEFAULT, Selection, measured_batches

Window = str | tuple[int, int] | tuple[str, int] | tuple[str, int, int]
FRAME_SCHEMA = {
    "lane": pl.Categorical, "kind": pl.Categorical, "name": pl.Categorical, "start_ns": pl.Int64,
    "end_ns": pl.Int64, "device_id": pl.Int64, "stream_id": pl.Int64, "pid": pl.Int64, "tid": pl.Int64,
    "thread": pl.Categorical, "level": pl.Int64, "bytes": pl.Int64,
}
_NAME_ID = {"demangled": "demangledName", "short": "shortName", "mangled": "coalesce(mangledName, demangledName)"}
_PID_MASK = -16777216  # the process part of a globalTid (nsys packs pid and tid into one integer)


# -- the frame ------------------------------------------------------------------------------------------------
def timeline_frame(report: Report, *, window: Window = ("batch_*", 3), select: Selection = DEFAULT,
                   names: KernelNames = "short", threads: str = "launching") -> pl.DataFrame:
    """The GPU ops and NVTX ranges of one window of ``report``, one row each (ops first, then ranges).

    ``window``: ``(start_ns, end_ns)``; ``(pattern, count)`` or ``(pattern, count, skip)``: ``count``
    consecutive measured instances of the range glob ``pattern`` (outermost, outside the selection's warm-up
    ranges, as measured batches are chosen) of each process (rank), after its first ``skip``, from the earliest
    start of the chosen instances to the latest end of them or of the GPU work they launched; any other string: every
    measured instance of that range glob, likewise; ``"capture"``: from the first to the last NVTX range or
    GPU op (what the timeline can show).

    Columns (:data:`FRAME_SCHEMA`): ``lane`` (``gpu`` or ``thread``), ``kind`` (``kernel``, ``memcpy``,
    ``memset``, ``range``), ``name`` (kernel name per ``names``; copy direction; ``memset``; range name),
    ``start_ns``, ``end_ns``, ``device_id`` and ``stream_id`` (ops), ``pid``, ``tid`` and ``thread`` (name)
    of the thread whose CUDA call launched the op, or of the range's thread; ``level`` (range nesting,
    0 = outermost), ``bytes`` (copies, memsets); and constants ``report``, ``window`` (what was chosen, in
    words), ``window_start_ns``, ``window_end_ns``. Ops are those running in the window, ranges those
    overlapping it on the threads that launched its ops (``threads="all"``: on every thread)."""
    if not any(report.has(t) for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
                                       "CUPTI_ACTIVITY_KIND_MEMSET")):
        report.require("CUPTI_ACTIVITY_KIND_KERNEL", purpose="the GPU timeline")
    if threads not in ("launching", "all"):
        raise ValueError(f"threads must be 'launching' or 'all', not {threads!r}")
    nesting = range_nesting(report) if report.has("NVTX_EVENTS") else None
    start, end, label = _window(report, window, select, nesting)
    ops = _ops(report, start, end, names)
    launching = ops["tid_global"].unique().drop_nulls()
    ranges = _ranges(report, start, end, nesting, None if threads == "all" else launching)
    if start is None:
        start = min(v for v in (ops["start_ns"].min(), ranges["start_ns"].min()) if v is not None)
        end = max(v for v in (ops["end_ns"].max(), ranges["end_ns"].max()) if v is not None)
    named = report.frame("SELECT global_tid AS tid_global, min(thread_name) AS thread FROM threads GROUP BY ALL")
    ids = [(pl.col("tid_global") // (1 << 24) % (1 << 24)).alias("pid"),
           (pl.col("tid_global") % (1 << 24)).alias("tid")]
    parts = [part.lazy().join(named.lazy(), on="tid_global", how="left").with_columns(*ids)
             for part in (ops, ranges)]
    frame = (pl.concat(parts, how="diagonal_relaxed")
             .select(*[pl.col(c).cast(t) for c, t in FRAME_SCHEMA.items()])
             .with_columns(report=pl.lit(report.name).cast(pl.Categorical),
                           window=pl.lit(label).cast(pl.Categorical), window_start_ns=pl.lit(start, pl.Int64),
                           window_end_ns=pl.lit(end, pl.Int64))
             .collect())
    return _in_fixed_order(frame)


#: The order of the frame's rows; names break the (rare) ties of the numeric keys.
_ORDER = (pl.col("lane") == "thread", "start_ns", "end_ns", "device_id", "stream_id", "tid", "level")


def _in_fixed_order(frame: pl.DataFrame) -> pl.DataFrame:
    """DuckDB returns unions in no fixed order: sorted, the same window gives the same frame. A sort keyed on
    the names too would encode a million strings, so rows are sorted by the numeric keys, and only when two rows
    tie on all of them by name as well. The order is computed as row numbers and the rows gathered once: a
    multi-key ``DataFrame.sort`` of the capture window of a million kernels took 0.4 GB more at its peak."""
    order = frame.select(pl.arg_sort_by(*_ORDER, nulls_last=True)).to_series()
    keys = frame.select(*_ORDER)[order]
    tied = keys.select(pl.all_horizontal(pl.all().eq_missing(pl.all().shift(1)))).to_series().slice(1)
    if tied.any():  # two neighbours in that order have the same keys
        order = frame.select(pl.arg_sort_by(*_ORDER, pl.col("name").cast(pl.String), nulls_last=True)).to_series()
    return frame[order]


def _window(report: Report, window: Window, select: Selection,
            nesting: pl.DataFrame | None) -> tuple[int | None, int | None, str]:
    """(start, end, words) of the window; start and end are None for the capture (taken from the data)."""
    if isinstance(window, tuple) and len(window) == 2 and all(isinstance(v, (int, np.integer)) for v in window):
        start, end = window
        if end <= start:
            raise ValueError(f"window end {end} must come after its start {start}")
        return int(start), int(end), f"{start:,} – {end:,} ns"
    if window == "capture":
        return None, None, "whole capture"
    if isinstance(window, str):
        pattern, count, skip = window, None, 0
    elif isinstance(window, tuple) and len(window) in (2, 3) and isinstance(window[0], str):
        pattern, count, skip = window[0], int(window[1]), int(window[2]) if len(window) == 3 else 0
    else:
        raise ValueError(f"window must be (start_ns, end_ns), (pattern, count[, skip]), 'capture' or a range glob;"
                         f" not {window!r}")
    if nesting is None:
        report.require("NVTX_EVENTS", purpose=f"the {pattern!r} window")
    chosen = measured_batches(_light_trace(report, nesting),
                              Selection(exclude_within=select.exclude_within, merge_numbered=False, batches=pattern))
    # COUNT and SKIP are per process: in a multi-process capture (one rank per process) the instances of the
    # ranks interleave in time, and a count over all of them would cover a few steps of one rank only.
    chosen = chosen.sort("start_ns", "range_id").with_columns(_process=pl.col("global_tid") // (1 << 24))
    nth = pl.int_range(pl.len()).over("_process")
    picked = chosen.filter(nth >= skip, True if count is None else nth < skip + count)
    if picked.is_empty():
        raise MissingDataError(f"{report.path}: no measured instance of NVTX range {pattern!r}"
                               + (f" outside {', '.join(select.exclude_within)}" if select.exclude_within else "")
                               + (f" after the first {skip}" if skip else ""))
    start, cpu_end = int(picked["start_ns"].min()), int(picked["end_ns"].max())
    # The instances go in as literal integers: registering a frame, or passing lists as parameters, makes DuckDB
    # import pyarrow.dataset or pandas (a third of a second).
    rows = ", ".join(f"({int(tid)}, {int(begin)}, {int(end)})"
                     for tid, begin, end in picked.select("global_tid", "start_ns", "end_ns").iter_rows())
    gpu_end = report.sql(
        f"WITH i(global_tid, start_ns, end_ns) AS (VALUES {rows}) SELECT max(o.end_ns) FROM i "
        "JOIN raw.CUPTI_ACTIVITY_KIND_RUNTIME AS r ON r.globalTid = i.global_tid AND r.start >= i.start_ns "
        "AND r.\"end\" <= i.end_ns "
        f"JOIN gpu_ops AS o ON o.correlation_id = r.correlationId AND o.global_pid = (r.globalTid & {_PID_MASK})"
    ).fetchone()[0]
    first, last = picked["range"][0], picked["range"][-1]
    what = first if first == last else f"{first} … {last}"
    processes = chosen["_process"].n_unique()
    if processes == 1:
        label = f"{what} ({picked.height:,} of {chosen.height:,} measured {pattern})"
    else:
        label = (f"{what} ({_spread(picked['_process'].value_counts()['count'])} of "
                 f"{_spread(chosen['_process'].value_counts()['count'])} measured {pattern} per rank)")
    return start, max(cpu_end, int(gpu_end or cpu_end)), label


def _spread(counts: pl.Series) -> str:
    """One count, or the range of counts when the ranks differ: ``20``, ``19–20``."""
    low, high = int(counts.min()), int(counts.max())
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _light_trace(report: Report, nesting: pl.DataFrame) -> pl.DataFrame:
    """NVTX range instances with their nesting, without GPU projection (enough to choose instances)."""
    ranges = report.frame("SELECT range_id, name AS range, start_ns, end_ns, global_tid FROM nvtx_ranges")
    return (ranges.join(nesting.select("range_id", "parent_id", "level"), on="range_id", how="left")
            .with_columns(pl.col("level").fill_null(0)).sort("start_ns", "range_id"))


def _overlapping(start: int | None, end: int | None) -> str:
    return "" if start is None else f"WHERE end_ns >= {int(start)} AND start_ns <= {int(end)}"


def _ops(report: Report, start: int | None, end: int | None, names: KernelNames) -> pl.DataFrame:
    """Ops running in [start, end] (all for None) with the globalTid of their launching call.

    Kernel names travel as StringIds ids and are looked up once per distinct id, and kinds as small codes:
    a million-kernel window then moves integers, not a million strings."""
    inside = "" if start is None else f'WHERE "end" >= {int(start)} AND start <= {int(end)}'
    parts = []
    if report.has("CUPTI_ACTIVITY_KIND_KERNEL"):
        parts.append(f"SELECT 0 AS kind, {_NAME_ID[names]} AS name_id, NULL AS name, start AS start_ns, "
                     '"end" AS end_ns, '
                     "deviceId AS device_id, streamId AS stream_id, globalPid AS global_pid, "
                     f"correlationId AS correlation_id, NULL AS bytes FROM raw.CUPTI_ACTIVITY_KIND_KERNEL {inside}")
    if report.has("CUPTI_ACTIVITY_KIND_MEMCPY"):
        parts.append("SELECT 1, NULL, direction, start_ns, end_ns, device_id, stream_id, global_pid, correlation_id, "
                     f"bytes FROM memcpy {_overlapping(start, end)}")
    if report.has("CUPTI_ACTIVITY_KIND_MEMSET"):
        parts.append("SELECT 2, NULL, 'memset', start_ns, end_ns, device_id, stream_id, global_pid, correlation_id, "
                     f"bytes FROM memset {_overlapping(start, end)}")
    launch = (f"LEFT JOIN (SELECT correlationId, globalTid FROM raw.CUPTI_ACTIVITY_KIND_RUNTIME) AS r "
              f"ON r.correlationId = o.correlation_id AND (r.globalTid & {_PID_MASK}) = o.global_pid")
    frame = report.frame(f"SELECT CAST(o.kind AS UTINYINT) AS kind, CAST(o.name_id AS BIGINT) AS name_id, "
                         f"CAST(o.name AS VARCHAR) AS name, o.start_ns, o.end_ns, o.device_id, o.stream_id, "
                         f"CAST(o.bytes AS BIGINT) AS bytes, r.globalTid AS tid_global "
                         f"FROM ({' UNION ALL '.join(parts)}) AS o {launch}")
    ids = frame["name_id"].drop_nulls().unique().to_list()
    strings = report.frame(f"SELECT id AS name_id, value FROM raw.StringIds WHERE id IN ({', '.join(map(str, ids))})") \
        if ids else pl.DataFrame(schema={"name_id": pl.Int64, "value": pl.String})
    strings = strings.with_columns(pl.col("value").cast(pl.Categorical))
    kinds = pl.DataFrame({"kind": [0, 1, 2], "_kind": ["kernel", "memcpy", "memset"]},
                         schema={"kind": pl.UInt8, "_kind": pl.Categorical})
    return (frame.lazy().join(strings.lazy(), on="name_id", how="left")
            .join(kinds.lazy(), on="kind", how="left")
            .select(pl.lit("gpu").alias("lane"), pl.col("_kind").alias("kind"),
                    pl.coalesce(pl.col("value"), pl.col("name").cast(pl.Categorical)).alias("name"),
                    "start_ns", "end_ns", "device_id", "stream_id", "bytes", "tid_global")
            .collect())


def _ranges(report: Report, start: int | None, end: int | None, nesting: pl.DataFrame | None,
            launching: pl.Series | None) -> pl.DataFrame:
    """NVTX ranges overlapping [start, end] (all for None), on the ``launching`` threads (None: all)."""
    if nesting is None:
        # No NVTX_EVENTS (nsys writes none when no range was captured): no range rows, but every column the
        # frame selects, so that the GPU rows are still drawn.
        return pl.DataFrame(schema={"name": pl.String, "start_ns": pl.Int64, "end_ns": pl.Int64,
                                    "tid_global": pl.Int64, "lane": pl.String, "kind": pl.String,
                                    "level": pl.Int64})
    ranges = report.frame(f"SELECT range_id, name, start_ns, end_ns, global_tid AS tid_global FROM nvtx_ranges "
                          f"{_overlapping(start, end)}")
    if launching is not None:
        ranges = ranges.filter(pl.col("tid_global").is_in(launching.implode()))
    return (ranges.join(nesting.select("range_id", "level"), on="range_id", how="left")
            .with_columns(lane=pl.lit("thread"), kind=pl.lit("range"), level=pl.col("level").fill_null(0))
            .drop("range_id"))
