"""Pure interval maths on integer nanoseconds: unions, and how ranges on one thread nest.

Kept free of I/O and of DuckDB so that it can be property-tested on its own.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def union_length(starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> int:
    """Length of the union of the half-open intervals [start, end): time covered at least once.

    Overlaps count once, so the result never exceeds the sum of the lengths nor the hull
    (last end - first start).
    """
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    if s.size == 0:
        return 0
    order = np.lexsort((e, s))
    s, e = s[order], e[order]
    covered_until = np.maximum.accumulate(e)
    previous = np.concatenate(([s[0]], covered_until[:-1]))
    return int(np.maximum(0, e - np.maximum(s, previous)).sum())


def merge(starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """The union as disjoint, sorted intervals (touching intervals are joined)."""
    pairs = sorted(zip(np.asarray(starts).tolist(), np.asarray(ends).tolist()))
    out: list[tuple[int, int]] = []
    for s, e in pairs:
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


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


def ancestors(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (range, ancestor-or-self) pair of a parent array, as two aligned index arrays."""
    child_idx: list[int] = []
    ancestor_idx: list[int] = []
    parents = parent.tolist()
    for i in range(len(parents)):
        j = i
        while j != -1:
            child_idx.append(i)
            ancestor_idx.append(j)
            j = parents[j]
    return np.asarray(child_idx, dtype=np.int64), np.asarray(ancestor_idx, dtype=np.int64)
