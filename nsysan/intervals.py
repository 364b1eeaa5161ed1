"""Pure interval maths on integer nanoseconds: the only interval code in nsysan.

Intervals are half-open, [start, end). A *span set* is a pair of int64 arrays (starts, ends), sorted and
disjoint, as :func:`merge` returns it; the functions below that take one expect that shape. Kept free of I/O
so that it can be property-tested on its own (tests/test_intervals.py).

* :func:`merge`, :func:`union_length`, :func:`length`, :func:`intersect`, :func:`covers`: unions of intervals;
* :func:`clipped_lengths`, :func:`overlaps`, :func:`gaps`: intervals seen through a window (a span set);
* :func:`union_piece`: the same union as a polars expression, for unions per group inside a query;
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


@dataclass(frozen=True)
class Nesting:
    """How ranges nest, aligned with the input order.

    ``parent[i]`` is the index of the tightest range on the same thread that contains range i (-1 when
    none), ``level[i]`` its depth (0 for outermost), and ``crossing[i]`` is True when range i partially
    overlaps another range of its thread (possible for start/end ranges only; push/pop ranges always nest).
    """

    parent: np.ndarray
    level: np.ndarray
    crossing: np.ndarray


def nest(threads: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Nesting:
    """Find each range's enclosing range on its own thread with one sort and one stack sweep.

    A range contains another when it starts no later and ends no earlier. Among ranges with identical
    bounds, the earlier one in the input contains the later one, so every range has one parent.
    """
    n = len(starts)
    parent = np.full(n, -1, dtype=np.int64)
    level = np.zeros(n, dtype=np.int64)
    crossing = np.zeros(n, dtype=bool)
    order = np.lexsort((np.arange(n), -np.asarray(ends, dtype=np.int64), starts, threads))
    t_list, s_list, e_list = threads.tolist(), starts.tolist(), ends.tolist()
    stack: list[int] = []
    current_thread = None
    for i in order.tolist():
        if t_list[i] != current_thread:
            stack.clear()
            current_thread = t_list[i]
        start, end = s_list[i], e_list[i]
        # Ranges that ended before this one starts can contain neither it nor any later range.
        while stack and e_list[stack[-1]] < start:
            stack.pop()
        for j in reversed(stack):
            if e_list[j] >= end:
                parent[i] = j
                level[i] = level[j] + 1
                break
        for j in stack:
            if start <= e_list[j] < end:
                crossing[i] = crossing[j] = True
        stack.append(i)
    return Nesting(parent=parent, level=level, crossing=crossing)
