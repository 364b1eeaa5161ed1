"""nsysan.intervals: worked examples, and properties checked against brute force on random inputs.

Every function of the module is covered here, the polars union expression included, because intervals.py is the
only interval code the analyses run."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsysan import intervals
from nsysan.intervals import (clipped_lengths, covers, empty, gaps, intersect, length, merge, nest, overlaps, union_length,
                              union_piece, union_pieces)

GRID = 40  # brute-force union: count the integer instants covered on [0, GRID)
# No per-example deadline: the brute-force oracles are quadratic and CI machines can be busy.
quick = settings(deadline=None, max_examples=100)
thorough = settings(deadline=None, max_examples=150)

spans = st.lists(st.tuples(st.integers(0, GRID), st.integers(0, GRID)).map(sorted), max_size=12)


def _split(pairs):
    return [s for s, _ in pairs], [e for _, e in pairs]


# -- union ------------------------------------------------------------------------------------------------

def test_union_length_examples():
    assert union_length([], []) == 0
    assert union_length([0], [10]) == 10
    assert union_length([0, 5], [10, 15]) == 15  # overlap 5..10 counted once
    assert union_length([0, 20], [10, 30]) == 20  # gap 10..20 not counted
    assert union_length([0, 2, 3], [10, 4, 5]) == 10  # contained intervals add nothing
    assert union_length([0, 10], [10, 20]) == 20  # touching
    assert union_length([5, 0], [6, 100]) == 100  # unsorted input
    assert union_length(np.array([7]), np.array([7])) == 0  # empty interval


def _pairs(spans) -> list[tuple[int, int]]:
    return list(zip(spans[0].tolist(), spans[1].tolist()))


def test_merge_examples():
    assert _pairs(merge([0, 5, 20], [10, 15, 30])) == [(0, 15), (20, 30)]
    assert _pairs(merge([0, 10], [10, 20])) == [(0, 20)]  # touching intervals are joined
    assert _pairs(merge([3, 0], [3, 1])) == [(0, 1)]  # empty interval dropped
    assert _pairs(merge([], [])) == []


@quick
@given(spans)
def test_union_equals_brute_force_over_a_grid(pairs):
    starts, ends = _split(pairs)
    covered = sum(1 for t in range(GRID) if any(s <= t < e for s, e in pairs))
    assert union_length(starts, ends) == covered


@quick
@given(spans)
def test_union_bounds(pairs):
    starts, ends = _split(pairs)
    total = union_length(starts, ends)
    lengths = [e - s for s, e in pairs]
    assert total <= sum(lengths)
    assert total >= max(lengths, default=0)
    assert total <= (max(ends) - min(starts) if pairs else 0)  # the hull


@quick
@given(spans)
def test_merge_is_idempotent_and_agrees_with_union_length(pairs):
    merged = _pairs(merge(*_split(pairs)))
    assert _pairs(merge(*_split(merged))) == merged
    assert all(s < e for s, e in merged)
    assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(merged, merged[1:]))  # disjoint, sorted
    assert sum(e - s for s, e in merged) == union_length(*_split(pairs)) == length(merge(*_split(pairs)))


def _covered(pairs) -> set[int]:
    return {t for s, e in pairs for t in range(s, e)}


@quick
@given(spans, spans)
def test_intersect_equals_brute_force(a, b):
    got = intersect(merge(*_split(a)), merge(*_split(b)))
    assert _covered(_pairs(got)) == _covered(a) & _covered(b)
    assert _pairs(merge(*got)) == _pairs(got)  # a span set again


@quick
@given(spans, st.lists(st.integers(-2, GRID + 2), max_size=10))
def test_covers_equals_brute_force(pairs, points):
    got = covers(merge(*_split(pairs)), np.asarray(points, dtype=np.int64)).tolist()
    assert got == [any(s <= t < e for s, e in pairs) for t in points]


@quick
@given(spans, spans)
def test_clipped_lengths_and_overlaps_equal_brute_force(ops, window):
    win = merge(*_split(window))
    inside = _covered(window)
    starts, ends = _split(ops)
    assert clipped_lengths(starts, ends, win).tolist() == [len(set(range(s, e)) & inside) for s, e in ops]
    # An op shares time with the window, or, taking no time, lies inside it.
    expected = [bool(set(range(s, e)) & inside) or (s == e and s in inside) for s, e in ops]
    assert overlaps(starts, ends, win).tolist() == expected


def test_gaps_examples():
    window = merge([0, 100], [50, 200])                   # two window intervals: [0, 50) and [100, 200)
    busy = merge([5, 20, 30, 110, 150], [10, 25, 40, 120, 160])
    # gaps inside [0, 50): 10..20 and 25..30; inside [100, 200): 120..150; none across the two intervals
    assert gaps(busy, window).tolist() == [10, 5, 30]
    assert gaps(merge([5], [10]), window).tolist() == []


@quick
@given(spans, spans)
def test_gaps_are_the_idle_stretches_between_busy_spans_of_one_window_interval(busy_pairs, window_pairs):
    window = merge(*_split(window_pairs))
    busy = intersect(merge(*_split(busy_pairs)), window)
    inside = _covered(_pairs(window))
    # Brute force on the grid: a gap is a maximal run of idle instants inside the window, with busy time on
    # both sides, that never leaves the window.
    busy_at = _covered(_pairs(busy))
    expected, run, started = [], 0, False
    for t in range(-1, GRID + 2):
        if t in busy_at:
            if started and run:
                expected.append(run)
            started, run = True, 0
        elif t in inside:
            run += 1
        else:
            started, run = False, 0
    assert sorted(gaps(busy, window).tolist()) == sorted(expected)


@quick
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, GRID), st.integers(0, GRID)), max_size=15))
def test_union_piece_sums_to_the_union_per_group(rows):
    frame = pl.DataFrame([(g, min(s, e), max(s, e)) for g, s, e in rows], schema={"g": pl.Int64, "s": pl.Int64, "e": pl.Int64},
                         orient="row")
    got = (frame.sort("g", "s", "e").with_columns(piece=union_piece("s", "e", over=["g"]))
           .group_by("g").agg(pl.col("piece").sum()))
    expected = {g: union_length([s for h, s, _ in frame.rows() if h == g], [e for h, _, e in frame.rows() if h == g])
                for g in set(frame["g"].to_list())}
    assert dict(got.rows()) == expected
    whole = frame.sort("s", "e").with_columns(piece=union_piece("s", "e"))["piece"].sum() if frame.height else 0
    assert whole == union_length(frame["s"].to_list(), frame["e"].to_list())


@quick
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, GRID), st.integers(0, GRID)), max_size=15))
def test_union_pieces_are_union_piece_per_group_row_by_row(rows):
    frame = (pl.DataFrame([(g, min(s, e), max(s, e)) for g, s, e in rows], orient="row",
                          schema={"g": pl.Int64, "s": pl.Int64, "e": pl.Int64}).sort("g", "s", "e"))
    expected = frame.with_columns(piece=union_piece("s", "e", over=["g"]))["piece"].to_list()
    assert union_pieces(frame["g"].to_numpy(), frame["s"].to_numpy(), frame["e"].to_numpy()).tolist() == expected


def test_union_pieces_restart_in_each_group():
    # Group 1 reaches far beyond group 2's intervals, which must still count whole; equal ends tie.
    pieces = union_pieces(np.array([1, 1, 2, 2, 2]), np.array([0, 5, 10, 12, 20]), np.array([100, 100, 15, 15, 30]))
    assert pieces.tolist() == [100, 0, 5, 0, 10]
    assert union_pieces(np.array([], dtype=np.int64), np.array([]), np.array([])).tolist() == []


@quick
@given(spans, st.randoms(use_true_random=False))
def test_union_ignores_order(pairs, rnd):
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert union_length(*_split(shuffled)) == union_length(*_split(pairs))


# -- nesting ----------------------------------------------------------------------------------------------

def _nest(threads, starts, ends):
    return nest(np.asarray(threads, dtype=np.int64), np.asarray(starts, dtype=np.int64),
                np.asarray(ends, dtype=np.int64))


def test_nest_example():
    #            0: outer  1: inner  2: sibling  3: other thread  4: inside inner
    threads = [1, 1, 1, 2, 1]
    starts = [0, 10, 60, 5, 20]
    ends = [100, 50, 90, 95, 30]
    n = _nest(threads, starts, ends)
    assert n.parent.tolist() == [-1, 0, 0, -1, 1]
    assert n.level.tolist() == [0, 1, 1, 0, 2]
    assert n.crossing.tolist() == [False] * 5


def test_nest_identical_bounds_earlier_contains_later():
    n = _nest([1, 1, 1], [0, 0, 0], [10, 10, 10])
    assert n.parent.tolist() == [-1, 0, 1]
    assert n.level.tolist() == [0, 1, 2]


def test_nest_crossing_ranges():
    # 0 [0,100] contains 1 [10,50] and 2 [40,90]; 1 and 2 cross; 3 [45,48] is inside both 1 and 2.
    n = _nest([1, 1, 1, 1], [0, 10, 40, 45], [100, 50, 90, 48])
    assert n.crossing.tolist() == [False, True, True, False]
    assert n.parent[1] == 0 and n.parent[2] == 0
    # Documented (docs/metrics.md): the latest-starting containing range is the parent.
    assert n.parent[3] == 2 and n.level[3] == 2


def test_nest_back_to_back_ranges():
    # 0 [0,100] holds children 1..4 that touch end to start; 5 [100,100] sits at the instant 0 and 4 share.
    # Touching ranges cross (a zero-length call at the shared instant lies inside both); each child's parent is
    # 0, never an earlier sibling; 6 on another thread is on its own.
    n = _nest([1, 1, 1, 1, 1, 1, 2], [0, 0, 25, 50, 75, 100, 25], [100, 25, 50, 75, 100, 100, 50])
    assert n.parent.tolist() == [-1, 0, 0, 0, 0, 4, -1]
    assert n.level.tolist() == [0, 1, 1, 1, 1, 2, 0]
    assert n.crossing.tolist() == [False, True, True, True, True, False, False]


@st.composite
def nested_ranges(draw):
    """Properly nested ranges (push/pop style) on up to three threads, shuffled. Times never decrease
    along a thread, so children may share bounds with their parent and siblings may touch; every range
    has positive length (so containment among them is never ambiguous)."""
    ranges = []
    for thread in range(draw(st.integers(1, 3))):
        t = 0
        open_starts: list[int] = []
        for _ in range(draw(st.integers(0, 18))):
            t += draw(st.integers(0, 3))
            if open_starts and draw(st.booleans()):
                start = open_starts.pop()
                t = max(t, start + 1)
                ranges.append((thread, start, t))
            else:
                open_starts.append(t)
        while open_starts:
            start = open_starts.pop()
            t = max(t + draw(st.integers(0, 2)), start + 1)
            ranges.append((thread, start, t))
    order = draw(st.permutations(range(len(ranges))))
    return [ranges[i] for i in order]


def _contains(a, b, a_index, b_index):
    """Whether range a contains range b (nsysan's rule: starts no later, ends no earlier; among identical
    bounds the earlier one contains the later one)."""
    if a[0] != b[0]:
        return False
    if (a[1], a[2]) == (b[1], b[2]):
        return a_index < b_index
    return a[1] <= b[1] and a[2] >= b[2]


def _tightest_parent(ranges, i):
    candidates = [j for j in range(len(ranges)) if j != i and ranges[j][0] == ranges[i][0]
                  and _contains(ranges[j], ranges[i], j, i)]
    # Smallest container; among identical bounds the latest one (the innermost of that chain).
    return min(candidates, key=lambda j: (ranges[j][2] - ranges[j][1], -j), default=-1)


@thorough
@given(nested_ranges())
def test_parent_is_the_tightest_containing_range(ranges):
    n = _nest(*zip(*ranges)) if ranges else _nest([], [], [])
    for i in range(len(ranges)):
        assert n.parent[i] == _tightest_parent(ranges, i), (i, ranges)


@quick
@given(nested_ranges())
def test_parent_contains_child_and_level_counts_ancestors(ranges):
    if not ranges:
        return
    n = _nest(*zip(*ranges))
    for i, (thread, start, end) in enumerate(ranges):
        p = n.parent[i]
        if p == -1:
            assert n.level[i] == 0
            continue
        assert ranges[p][0] == thread and ranges[p][1] <= start and ranges[p][2] >= end
        assert n.level[i] == n.level[p] + 1
    # level = number of strict ancestors, found by walking the parent chain (which must end: no cycles).
    for i in range(len(ranges)):
        steps, j = 0, n.parent[i]
        while j != -1:
            steps, j = steps + 1, n.parent[j]
            assert steps <= len(ranges)
        assert steps == n.level[i]


@st.composite
def any_ranges(draw):
    """Arbitrary ranges (start/end ranges may cross) on up to two threads."""
    count = draw(st.integers(0, 15))
    out = []
    for _ in range(count):
        start = draw(st.integers(0, 30))
        out.append((draw(st.integers(0, 1)), start, start + draw(st.integers(0, 15))))
    return out


@quick
@given(any_ranges())
def test_crossing_matches_brute_force_and_parents_still_contain(ranges):
    if not ranges:
        return
    n = _nest(*zip(*ranges))
    for i, a in enumerate(ranges):
        crosses = any(
            j != i and b[0] == a[0] and a[1] <= b[2] and b[1] <= a[2]  # share at least an instant
            and not _contains(a, b, i, j) and not _contains(b, a, j, i)
            for j, b in enumerate(ranges))
        assert bool(n.crossing[i]) == crosses, (i, ranges)
        p = n.parent[i]
        if p != -1:
            assert _contains(ranges[p], a, p, i)
            assert n.level[i] == n.level[p] + 1
        else:
            assert n.level[i] == 0


@quick
@given(nested_ranges())
def test_no_crossing_among_properly_nested_ranges_that_never_touch(ranges):
    if not ranges:
        return
    touching = any(a[0] == b[0] and a[2] == b[1] for a in ranges for b in ranges if a is not b)
    n = _nest(*zip(*ranges))
    if not touching:
        assert not n.crossing.any()


def test_calls_inside_matches_the_pairwise_join_on_touching_ranges():
    """Crossing ranges are matched to calls by binary search; the answer must equal the plain
    calls x ranges join, including calls on a range's edges and ranges that touch end to start."""
    from nsysan.attribution import _calls_inside
    rng = np.random.default_rng(7)
    edges = np.cumsum(rng.integers(1, 50, 41))
    ranges = pl.DataFrame({"range_id": np.arange(40), "global_tid": rng.integers(0, 2, 40),
                           "start_ns": edges[:-1], "end_ns": edges[1:]})
    starts = rng.integers(0, int(edges[-1]), 300)
    calls = pl.DataFrame({"launch": np.arange(300), "global_tid": rng.integers(0, 3, 300),
                          "call_start": starts, "call_end": starts + rng.integers(0, 30, 300)})
    calls = pl.concat([calls, pl.DataFrame({"launch": [300], "global_tid": [int(ranges["global_tid"][3])],
                                            "call_start": [int(edges[3])], "call_end": [int(edges[4])]})],
                      how="vertical_relaxed")
    expected = (calls.join(ranges, on="global_tid")
                .filter((pl.col("start_ns") <= pl.col("call_start")) & (pl.col("end_ns") >= pl.col("call_end")))
                .select("range_id", "launch").sort("range_id", "launch"))
    got = _calls_inside(calls, ranges).sort("range_id", "launch")
    assert expected.height > 50
    assert got.rows() == expected.rows()


def test_results_are_integer_ns_and_booleans_even_when_empty():
    """Every result keeps integer nanoseconds (int64) and flags (bool), for empty inputs too: a float array
    would turn exact ns into rounded floats downstream."""
    none = empty()
    assert [a.dtype for a in none] == [np.int64, np.int64] and [a.size for a in none] == [0, 0]
    window = merge([0, 100], [50, 150])
    for starts, ends in (([], []), ([10, 60], [20, 120])):
        assert clipped_lengths(starts, ends, window).dtype == np.int64
        assert clipped_lengths(starts, ends, empty()).dtype == np.int64
        assert overlaps(starts, ends, window).dtype == bool and overlaps(starts, ends, empty()).dtype == bool
        assert covers(window, np.array(starts, dtype=np.int64)).dtype == bool
        assert covers(empty(), np.array(starts, dtype=np.int64)).dtype == bool
        assert [a.dtype for a in intersect(merge(starts, ends), window)] == [np.int64, np.int64]
    assert gaps(merge([0], [10]), window).dtype == np.int64
    assert gaps(merge([0, 20, 40], [10, 30, 45]), window).tolist() == [10, 10]
    nesting = nest(np.array([1, 1]), np.array([0, 10]), np.array([100, 20]))
    assert (nesting.parent.dtype, nesting.level.dtype, nesting.crossing.dtype) == (np.int64, np.int64, bool)
    assert nesting.parent.tolist() == [-1, 0] and nesting.level.tolist() == [0, 1]
    assert nest(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)).parent.size == 0


def test_a_zero_length_op_just_before_a_window_interval_does_not_overlap_it():
    window = merge([100, 300], [200, 400])
    starts = np.array([99, 100, 199, 200, 299, 300, 400])
    assert overlaps(starts, starts, window).tolist() == [False, True, True, False, False, True, False]
    assert clipped_lengths(starts, starts, window).tolist() == [0] * 7


@pytest.mark.parametrize("name", ["vit32x6x512", "vit16x12x1024"])
def test_climbing_in_slices_of_launches_finds_the_same_pairs(name, monkeypatch):
    """Launches climb their ranges in slices (the peak memory of a million-kernel report); slices of 7
    launches give the pairs of one slice, and those the plain join of calls and containing ranges gives."""
    import nsysan
    from nsysan import attribution

    path = next(p for p in nsysan.sample_paths() if p.stem == f"pipeline_gpu0_numa0_{name}")
    with nsysan.open(path) as report:
        calls, nesting = attribution.launches(report), attribution.range_nesting(report)
        whole = attribution.launch_ranges(calls, nesting).sort("range_id", "launch")
        monkeypatch.setattr(attribution, "CLIMB_SLICE", 7)
        sliced = attribution.launch_ranges(calls, nesting).sort("range_id", "launch")
    expected = (calls.with_row_index("launch").join(nesting, on="global_tid")
                .filter((pl.col("start_ns") <= pl.col("call_start")) & (pl.col("end_ns") >= pl.col("call_end")))
                .select("range_id", pl.col("launch").cast(pl.UInt32)).sort("range_id", "launch"))
    assert calls.height > 7 * 10 and whole.height > calls.height
    assert sliced.rows() == whole.rows() == expected.rows()


@quick
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, GRID), st.integers(0, GRID)), max_size=25),
       st.integers(1, 4))
def test_nest_is_the_same_in_slices(rows, size):
    """:func:`nest` sweeps the sorted ranges a slice at a time; crossing ranges and thread changes at the
    slices' edges give the result of one sweep."""
    threads = [t for t, _, _ in rows]
    starts = [min(s, e) for _, s, e in rows]
    ends = [max(s, e) for _, s, e in rows]
    whole = _nest(threads, starts, ends)
    original = intervals.NEST_SLICE
    try:
        intervals.NEST_SLICE = size
        sliced = _nest(threads, starts, ends)
    finally:
        intervals.NEST_SLICE = original
    for name in ("parent", "level", "crossing"):
        assert getattr(sliced, name).tolist() == getattr(whole, name).tolist()
