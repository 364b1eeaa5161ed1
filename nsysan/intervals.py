"""Pure interval maths on integer nanoseconds: the only interval code in nsysan.

Intervals are half-open, [start, end). A *span set* is a pair of int64 arrays (starts, ends), sorted and
disjoint, as :func:`merge` returns it; the functions below that take one expect that shape. Kept free of I/O
so that it can be property-tested on its own (tests/test_intervals.py).

* :func:`merge`, :func:`union_length`, :func:`length`, :func:`intersect`, :func:`covers`: unions of intervals;
* :func:`clipped_lengths`, :func:`overlaps`, :func:`gaps`: intervals seen through a window (a span set);
* :func:`union_piece`: the same union as a polars expression, for unions per group inside a query, and
  :func:`union_pieces` for groups of sorted rows;
* :func:`nest`: how ranges on one thread contain each other.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from nsysan.lazy import numpy as np

if TYPE_CHECKING:  # an alias for annotations only: evaluating it would import numpy (nsysan.lazy)
    Spans = tuple[np.ndarray, np.ndarray]


def _arrays(starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> Spans:
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def empty() -> Spans:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def merge(starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> Spans:
    """The union of the intervals as a span set: sorted, disjoint, empty intervals dropped, touching
    intervals joined."""
    s, e = _arrays(starts, ends)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return s, e
    order = np.lexsort((e, s))
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    first = np.empty(s.size, dtype=bool)
    first[0] = True
    first[1:] = s[1:] > reach[:-1]
    heads = np.flatnonzero(first)
    return s[heads], np.maximum.reduceat(e, heads)


def length(spans: Spans) -> int:
    """Total length of a span set."""
    return int((spans[1] - spans[0]).sum())


def union_length(starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> int:
    """Time covered at least once by the intervals: overlaps count once, so the result never exceeds the sum
    of the lengths nor the hull (last end - first start)."""
    return length(merge(starts, ends))


def covers(spans: Spans, points: np.ndarray) -> np.ndarray:
    """Whether each point lies inside the span set."""
    starts, ends = spans
    if starts.size == 0:
        return np.zeros(np.shape(points), dtype=bool)
    i = np.searchsorted(starts, points, side="right") - 1
    return (i >= 0) & (ends[np.maximum(i, 0)] > points)


def intersect(a: Spans, b: Spans) -> Spans:
    """Intersection of two span sets, as a span set."""
    if a[0].size == 0 or b[0].size == 0:
        return empty()
    points = np.unique(np.concatenate([a[0], a[1], b[0], b[1]]))
    left, right = points[:-1], points[1:]
    inside = covers(a, left) & covers(b, left)
    return merge(left[inside], right[inside])


def clipped_lengths(starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray, window: Spans) -> np.ndarray:
    """Length of each interval inside the window, vectorised (each interval on its own: overlaps between the
    intervals are not merged)."""
    ws, we = window
    s, e = _arrays(starts, ends)
    if ws.size == 0:
        return np.zeros(s.size, dtype=np.int64)
    before = np.concatenate(([0], np.cumsum(we - ws)))  # window time before window interval i

    def window_time_until(t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(ws, t, side="right") - 1
        j = np.maximum(i, 0)
        inside = np.clip(t - ws[j], 0, we[j] - ws[j])
        return np.where(i >= 0, before[j] + inside, 0)

    return np.maximum(0, window_time_until(e) - window_time_until(s))


def overlaps(starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray, window: Spans) -> np.ndarray:
    """Whether each interval shares time with the window; a zero-length interval counts when it lies inside
    the window (an op that took no measurable time still ran there)."""
    ws, we = window
    s, e = _arrays(starts, ends)
    if ws.size == 0:
        return np.zeros(s.size, dtype=bool)
    i = np.searchsorted(ws, np.maximum(e, s + 1), side="left") - 1  # last window interval starting before the end
    j = np.maximum(i, 0)
    return (i >= 0) & (we[j] > s)


def gaps(busy: Spans, window: Spans) -> np.ndarray:
    """Idle stretches between consecutive busy spans that lie in the same window interval (time before the
    first busy span and after the last one of a window interval is idle, but not a gap)."""
    bs, be = busy
    if bs.size < 2:
        return np.zeros(0, dtype=np.int64)
    which = np.searchsorted(window[0], bs, side="right") - 1
    same = which[1:] == which[:-1]
    return (bs[1:] - be[:-1])[same]


def union_piece(start: str, end: str, over: Sequence[str] = ()) -> pl.Expr:
    """Per row, the time its interval adds to the union of the intervals of earlier rows of its group.

    Rows must be sorted by ``start`` (then ``end``) within each group of ``over``; summed per group, the
    pieces are the length of the group's union (what :func:`union_length` gives), computed inside a query."""
    reach = pl.col(end).cum_max().shift(1)
    reach = reach.over(list(over)) if over else reach
    return (pl.col(end) - pl.max_horizontal(pl.col(start), reach.fill_null(pl.col(start)))).clip(lower_bound=0)


def union_pieces(groups: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """:func:`union_piece` per group as an array, for rows sorted by group, then start (each group's rows
    together): per row, the time its interval adds to the union of the earlier rows of its group.

    A scan over the rows, where ``union_piece(..., over=...)`` is a window over the groups (at a million
    ranges, ~140 bytes a row and seconds for its table of groups). The reach of the earlier rows is a running
    maximum that must start afresh in each group: it runs over the key (group number, rank of the end), which
    no row of an earlier group can exceed (exact below 3e9 rows, where the key would leave int64)."""
    groups, (starts, ends) = np.asarray(groups), _arrays(starts, ends)
    n = starts.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(groups[1:], groups[:-1], out=first[1:])
    by_end = np.argsort(ends, kind="stable")
    sorted_ends = ends[by_end]
    key = np.empty(n, dtype=np.int64)
    key[by_end] = np.arange(n)
    del by_end
    key += (np.cumsum(first, dtype=np.int64) - 1) * n
    np.maximum.accumulate(key, out=key)
    np.remainder(key, n, out=key)
    reach = np.empty(n, dtype=np.int64)  # of the rows before, in the same group
    reach[1:] = sorted_ends[key[:-1]]
    reach[first] = starts[first]
    return np.maximum(ends - np.maximum(starts, reach), 0)


@dataclass(frozen=True)
class Nesting:
    """How ranges nest, aligned with the input order.

    ``parent[i]`` is the index of the tightest range on the same thread that contains range i (-1 when
    none), ``level[i]`` its depth (0 for outermost), and ``crossing[i]`` is True when range i partially
    overlaps another range of its thread (start/end ranges) or touches one end to start (a zero-length call at
    that instant lies inside both, and neither contains the other).
    """

    parent: np.ndarray
    level: np.ndarray
    crossing: np.ndarray


#: Ranges handled at a time by :func:`nest`: Python lists of every range's bounds cost ~150 bytes a range.
NEST_SLICE = 1 << 16


def nest(threads: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Nesting:
    """Find each range's enclosing range on its own thread with one sort and one stack sweep.

    A range contains another when it starts no later and ends no earlier. Among ranges with identical
    bounds, the earlier one in the input contains the later one, so every range has one parent.
    """
    threads, (starts, ends) = np.asarray(threads), _arrays(starts, ends)
    n = len(starts)
    parent = np.full(n, -1, dtype=np.int64)
    level = np.zeros(n, dtype=np.int64)
    crossing = np.zeros(n, dtype=bool)
    order = np.lexsort((np.arange(n), -ends, starts, threads))
    stack: list[tuple[int, int, int]] = []  # the ranges still open, innermost last: (index, end, level)
    crossed: list[int] = []
    current_thread = None
    for first in range(0, n, NEST_SLICE):
        chunk = order[first:first + NEST_SLICE]
        parents, levels = [], []
        for i, thread, start, end in zip(chunk.tolist(), threads[chunk].tolist(), starts[chunk].tolist(),
                                         ends[chunk].tolist()):
            if thread != current_thread:
                stack = []
                current_thread = thread
            found, depth = -1, 0
            still_open = []
            for entry in stack:
                j, open_end, open_level = entry
                # Ended before this range starts: it can neither contain nor cross this or any later range.
                # Dropped wherever it sits (ranges that touch end to start sit under their successor), so the
                # stack holds only ranges open at this instant and the sweep stays linear.
                if open_end < start:
                    continue
                if open_end >= end:
                    found, depth = j, open_level + 1  # the last one that contains it is the innermost
                else:
                    crossed += (i, j)
                still_open.append(entry)
            still_open.append((i, end, depth))
            stack = still_open
            parents.append(found)
            levels.append(depth)
        parent[chunk] = parents
        level[chunk] = levels
    crossing[crossed] = True
    return Nesting(parent=parent, level=level, crossing=crossing)
