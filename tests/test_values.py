"""Values, not only ratios: every derived column a user sees, against an independent computation.

Independent sources, one per section: brute-force oracles in plain Python over the export's own tables
(read with sqlite3, never through nsysan) for bandwidth and utilization on the bundled H100 sweep; hand
computations written next to each hand-built case for compare / numa values, windows, gaps and thresholds.
A wrong unit (GiB/s for GB/s, 1e9 for 1e6) or a swapped column changes a value even where every ratio stays
the same, so values are compared, not ratios.
"""
from __future__ import annotations

import fnmatch
import re
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import nsysan
from builders import MAIN_PID, MAIN_TID, ExportBuilder
from support import Lazy
from nsysan.analyses.bandwidth import bandwidth_summary, copy_trace
from nsysan.analyses.compare import Settings, compare_groups, stage_observations
from nsysan.analyses.kernels import kernel_durations, kernel_summary
from nsysan.analyses.numa import numa_penalty
from nsysan.analyses.utilization import gpu_utilization, utilization_summary
from nsysan.engine import pooled
from nsysan.selection import Selection

SAMPLES = {path.name.removesuffix(".sqlite"): path for path in nsysan.sample_paths()}
EVERYTHING = Selection.everything()
TINY = 64 * 1024


def _read(path: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _has(path: Path, table: str) -> bool:
    return bool(_read(path, "SELECT count(*) FROM sqlite_master WHERE name = ?", table)[0][0])


# -- bandwidth per direction and memory kind: brute force over the export's tables -----------------------------------
def _copies_by_hand(path: Path) -> list[dict]:
    """Every memcpy and memset with its labels (the export's ENUM tables) and the name of the CUDA call that
    launched it (same correlationId, same process: the call's globalTid with the thread bits cleared)."""
    kinds = dict(_read(path, "SELECT id, label FROM ENUM_CUDA_MEM_KIND"))
    opers = dict(_read(path, "SELECT id, label FROM ENUM_CUDA_MEMCPY_OPER"))
    names = dict(_read(path, "SELECT id, value FROM StringIds"))
    calls = {}
    for gtid, cid, name_id, start in _read(path, "SELECT globalTid, correlationId, nameId, start "
                                                 "FROM CUPTI_ACTIVITY_KIND_RUNTIME ORDER BY start DESC"):
        calls[(gtid - gtid % (1 << 24), cid)] = names[name_id]
    out = []
    for s, e, n, kind, src, dst, cid, gpid in _read(path, "SELECT start, end, bytes, copyKind, srcKind, dstKind, "
                                                          "correlationId, globalPid FROM CUPTI_ACTIVITY_KIND_MEMCPY"):
        out.append(dict(start=s, end=e, bytes=n, direction=opers[kind], src=kinds.get(src), dst=kinds.get(dst),
                        api=calls.get((gpid, cid))))
    if _has(path, "CUPTI_ACTIVITY_KIND_MEMSET"):
        for s, e, n, kind, cid, gpid in _read(path, "SELECT start, end, bytes, memKind, correlationId, globalPid "
                                                    "FROM CUPTI_ACTIVITY_KIND_MEMSET"):
            out.append(dict(start=s, end=e, bytes=n, direction="Memset", src=None, dst=kinds.get(kind),
                            api=calls.get((gpid, cid))))
    return out


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint union of half-open spans (touching spans joined, empty ones dropped)."""
    merged: list[list[int]] = []
    for s, e in sorted(sp for sp in spans if sp[1] > sp[0]):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _bandwidth_by_hand(path: Path) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in _copies_by_hand(path):
        groups[(c["direction"], c["src"], c["dst"])].append(c)
    out = {}
    for key, copies in groups.items():
        total_bytes = sum(c["bytes"] for c in copies)
        total_ns = sum(c["end"] - c["start"] for c in copies)
        union_ns = sum(e - s for s, e in _union([(c["start"], c["end"]) for c in copies]))
        rates = np.array([c["bytes"] / (c["end"] - c["start"]) for c in copies if c["end"] > c["start"]])
        pageable = sum(1 for c in copies if c["api"] and "async" in c["api"].lower()
                       and "Pageable" in (c["src"], c["dst"]))
        tiny = [c for c in copies if c["bytes"] < TINY]
        out[key] = dict(copies=len(copies), bytes_total=total_bytes, time_total_ns=total_ns,
                        bandwidth_gbps=total_bytes / total_ns, time_union_ns=union_ns,
                        bandwidth_union_gbps=total_bytes / union_ns,
                        copy_gbps_p50=np.percentile(rates, 50), copy_gbps_p95=np.percentile(rates, 95),
                        copy_gbps_min=rates.min(), copy_gbps_max=rates.max(),
                        bytes_min=min(c["bytes"] for c in copies), bytes_max=max(c["bytes"] for c in copies),
                        pageable_async_copies=pageable, tiny_copies=len(tiny),
                        tiny_copy_pct=100 * len(tiny) / len(copies),
                        tiny_bytes_pct=100 * sum(c["bytes"] for c in tiny) / total_bytes if total_bytes else 0.0)
    return out


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_bandwidth_per_direction_and_memory_kind_equals_brute_force(name):
    expected = _bandwidth_by_hand(SAMPLES[name])
    with nsysan.open(SAMPLES[name]) as report:
        summary = bandwidth_summary(copy_trace(report, select=EVERYTHING).with_columns(report=pl.lit(name)))
    got = {(r["direction"], r["src_kind"], r["dst_kind"]): r for r in summary.iter_rows(named=True)}
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        row = got[key]
        for column, value in want.items():
            assert row[column] == pytest.approx(value, rel=1e-12), (name, key, column)
        # Flags in words: pageable memory in async copies, and tiny copies when they are at least half.
        flags = row["flags"] or ""
        assert ("pageable memory in" in flags) == (want["pageable_async_copies"] > 0 and key[0] != "Memset"), flags
        assert ("tiny copies" in flags) == (want["tiny_copy_pct"] >= 50 and key[0] != "Memset"), flags


def test_the_pageable_sample_flags_its_async_copies_in_both_directions():
    """The pageable run copies input (pageable -> device) and output (device -> pageable) asynchronously:
    35 batches' D2H copies have a pageable destination, and must be flagged like the H2D ones."""
    expected = _bandwidth_by_hand(SAMPLES["pipeline_gpu0_numa0_vit32x6x512_pageable"])
    d2h = expected[("Device-to-Host", "Device", "Pageable")]
    assert d2h["pageable_async_copies"] == d2h["copies"] == 35
    result = nsysan.bandwidth(SAMPLES["pipeline_gpu0_numa0_vit32x6x512_pageable"], select=EVERYTHING).frame
    row = result.filter(pl.col("direction") == "Device-to-Host").row(0, named=True)
    assert row["pageable_async_copies"] == 35
    assert row["flags"].startswith("pageable memory in 35 async copies")


def test_bandwidth_is_in_gb_per_s_of_1e9_bytes(tmp_path):
    b = ExportBuilder()
    cid = b.call(MAIN_TID, 10, 20, api="cudaMemcpyAsync")
    b.op(cid, 1000, 1000 + 2 ** 20, kind="memcpy", nbytes=2 ** 30)  # 1 GiB in 1 048 576 ns
    path = b.write(tmp_path / "unit.sqlite")
    row = nsysan.bandwidth(path, select=EVERYTHING).frame.row(0, named=True)
    # 2^30 B / 2^20 ns = 1024 B/ns = 1024 GB/s (1 GB = 1e9 B); in GiB/s it would be 953.7.
    assert row["bandwidth_gbps"] == pytest.approx(1024.0)
    assert row["bandwidth_union_gbps"] == pytest.approx(1024.0)
    assert row["copy_gbps_p50"] == pytest.approx(1024.0)


# -- thresholds: the == case of each -----------------------------------------------------------------------------------
def _copies_of(tmp_path: Path, sizes: list[int], *, api: str = "cudaMemcpyAsync") -> Path:
    b = ExportBuilder()
    for i, n in enumerate(sizes):
        cid = b.call(MAIN_TID, 10 * i, 10 * i + 5, api=api)
        b.op(cid, 1000 + 100 * i, 1000 + 100 * i + 50, kind="memcpy", nbytes=n)
    return b.write(tmp_path / "sizes.sqlite")


def test_a_copy_of_exactly_tiny_bytes_is_not_tiny(tmp_path):
    path = _copies_of(tmp_path, [100, 99, 4096, 5000])
    row = nsysan.bandwidth(path, tiny_bytes=100, select=EVERYTHING).frame.row(0, named=True)
    # Tiny means < 100 B: only the 99 B copy; 1 of 4 copies = 25 %, below the 50 % that flags.
    assert (row["tiny_copies"], row["tiny_copy_pct"]) == (1, 25.0)
    assert row["tiny_bytes_pct"] == pytest.approx(100 * 99 / (100 + 99 + 4096 + 5000))
    assert row["flags"] is None


def test_exactly_half_tiny_copies_is_flagged(tmp_path):
    path = _copies_of(tmp_path, [10, 20, TINY, 2 * TINY])
    row = nsysan.bandwidth(path, select=EVERYTHING).frame.row(0, named=True)
    # 2 of 4 copies below 65536 B: 50 %, which is the flagging share (>= 50 %).
    assert (row["tiny_copies"], row["tiny_copy_pct"]) == (2, 50.0)
    assert row["flags"] == f"tiny copies: 50% of copies < {TINY} B carry {round(100 * 30 / (3 * TINY + 30), 1)}% " \
                           "of bytes: batch them"


def test_pageable_destination_of_an_async_copy_is_flagged(tmp_path):
    path = _copies_of(tmp_path, [TINY, TINY])
    con = sqlite3.connect(path)
    # One D2H copy into pageable memory (async call), one H2D copy from pinned memory.
    con.execute("UPDATE CUPTI_ACTIVITY_KIND_MEMCPY SET copyKind = 2, srcKind = 2, dstKind = 0 WHERE correlationId = 1")
    con.commit()
    con.close()
    frame = nsysan.bandwidth(path, select=EVERYTHING).frame
    d2h = frame.filter(pl.col("direction") == "Device-to-Host").row(0, named=True)
    h2d = frame.filter(pl.col("direction") == "Host-to-Device").row(0, named=True)
    assert (d2h["src_kind"], d2h["dst_kind"], d2h["pageable_async_copies"]) == ("Device", "Pageable", 1)
    assert d2h["flags"] == "pageable memory in 1 async copies (staged, not async): pin the host buffer"
    assert h2d["pageable_async_copies"] == 0 and h2d["flags"] is None


def _gap_export(tmp_path: Path, gaps: list[int]) -> Path:
    """Kernels of 10 ns separated by the given idle gaps, all launched inside one range "r"."""
    b = ExportBuilder()
    t = 1000
    spans = []
    for gap in [0, *gaps]:
        t += gap
        spans.append((t, t + 10))
        t += 10
    b.range("r", 0, 100)
    for i, (s, e) in enumerate(spans):
        b.launch(MAIN_TID, 1 + i, 2 + i, s, e)
    return b.write(tmp_path / "gaps.sqlite")


def _utilization(path: Path, **options) -> dict:
    short = options.pop("short_gap_ns", 10_000)
    launch = options.pop("launch_gap_ns", 100_000)
    with nsysan.open(path) as report:
        parts = gpu_utilization(report, **options)
    out = utilization_summary(parts.with_columns(report=pl.lit("r")), short_gap_ns=short, launch_gap_ns=launch)
    return out.row(0, named=True)


def test_a_gap_of_exactly_the_threshold_is_not_short(tmp_path):
    path = _gap_export(tmp_path, [20, 30, 40])
    r = _utilization(path, window="r", short_gap_ns=30, launch_gap_ns=40)
    # Window r: [0, end of its last kernel]; idle = the 1000 ns before the first kernel + gaps 20, 30, 40.
    assert (r["idle_gaps"], r["idle_ns"]) == (3, 1000 + 90)
    assert r["gap_us_max"] == pytest.approx(0.040)
    assert r["short_gap_idle_pct"] == pytest.approx(100 * 20 / 1090)  # only 20 < 30
    assert r["launch_gap_idle_pct"] == pytest.approx(100 * 50 / 1090)  # 20 and 30 < 40


def test_launch_bound_at_exactly_half_idle_and_half_in_launch_gaps(tmp_path):
    b = ExportBuilder()
    b.range("r", 0, 400)
    # Busy [0,100) [150,250) [400,...): inside r's window [0, 400) with the last kernel ending at 400.
    b.launch(MAIN_TID, 0, 0, 0, 100)
    b.launch(MAIN_TID, 1, 1, 150, 250)
    b.launch(MAIN_TID, 2, 2, 350, 400)
    path = b.write(tmp_path / "half.sqlite")
    # Window 400 ns, busy 250 ns -> idle 150 = 37.5 %: not launch-bound whatever the gaps.
    assert _utilization(path, window="r", launch_gap_ns=1000)["launch_bound"] is False
    b2 = ExportBuilder()
    b2.range("r", 0, 400)
    b2.launch(MAIN_TID, 0, 0, 0, 100)
    b2.launch(MAIN_TID, 1, 1, 200, 300)
    b2.launch(MAIN_TID, 2, 2, 390, 400)
    path = b2.write(tmp_path / "exact.sqlite")
    # Busy 100 + 100 + 10 = 210 of 400 -> idle 190 = 47.5 %; with a last kernel of 10 ns at [390, 400) ...
    r = _utilization(path, window="r", launch_gap_ns=100)
    assert r["idle_pct"] == pytest.approx(47.5) and r["launch_bound"] is False
    b3 = ExportBuilder()
    b3.range("r", 0, 400)
    b3.launch(MAIN_TID, 0, 0, 0, 100)
    b3.launch(MAIN_TID, 1, 1, 200, 300)
    path = b3.write(tmp_path / "fifty.sqlite")
    # Window [0, 400): busy 200 -> idle 200 = exactly 50 %; gaps: one of 100 ns (between the kernels), plus
    # 100 ns after the last kernel (idle, not a gap). Launch gaps < 101 ns: 100 of 200 idle ns = exactly 50 %.
    r = _utilization(path, window="r", launch_gap_ns=101)
    assert (r["idle_pct"], r["launch_gap_idle_pct"]) == (50.0, 50.0)
    assert r["launch_bound"] is True
    assert _utilization(path, window="r", launch_gap_ns=100)["launch_bound"] is False  # the gap is not < 100


# -- windows: GPU work that outlives them ------------------------------------------------------------------------------
def test_batches_window_reaches_the_end_of_gpu_work_that_outlives_the_last_batch(tmp_path):
    b = ExportBuilder()
    b.range("warmup_0", 0, 90)
    b.range("batch_1", 100, 200)
    b.launch(MAIN_TID, 110, 120, 130, 150)
    b.range("batch_2", 300, 400)
    b.range("forward", 310, 390)
    b.launch(MAIN_TID, 320, 330, 350, 700)  # launched inside forward (nested in batch_2), ends at 700 > 400
    path = b.write(tmp_path / "outlive.sqlite")
    r = _utilization(path, window="batches")
    # Window: first measured batch start 100 to the end of the last batch's GPU work 700 = 600 ns.
    assert (r["window_instances"], r["window_ns"]) == (2, 600)
    assert (r["kernel_busy_ns"], r["idle_ns"], r["idle_gaps"]) == (20 + 350, 600 - 370, 1)
    assert r["gap_us_max"] == pytest.approx(0.2)  # 150 -> 350
    throughput = nsysan.throughput(path, batch_size=1).frame.row(0, named=True)
    assert throughput["window_ns"] == 300  # throughput's window is CPU time only: 100 -> 400


def test_range_window_reaches_the_end_of_its_gpu_work_and_gaps_stay_within_each_instance(tmp_path):
    b = ExportBuilder()
    b.range("forward", 0, 100)
    b.launch(MAIN_TID, 10, 20, 30, 40)
    b.launch(MAIN_TID, 20, 30, 60, 250)  # outlives forward #1: its window is [0, 250)
    b.range("forward", 1000, 1100)
    b.launch(MAIN_TID, 1010, 1020, 1000, 1050)  # starts exactly at the window's start
    b.launch(MAIN_TID, 1030, 1040, 1070, 1080)
    path = b.write(tmp_path / "forward.sqlite")
    r = _utilization(path, window="forward")
    assert (r["window_instances"], r["window_ns"]) == (2, 250 + 100)
    # Gaps: 40 -> 60 in the first window, 1050 -> 1070 in the second; never 250 -> 1000 across windows.
    assert r["idle_gaps"] == 2 and r["gap_us_max"] == pytest.approx(0.020)
    assert r["kernel_busy_ns"] == 10 + 190 + 50 + 10


# -- utilization on the sample sweep: brute force ---------------------------------------------------------------------
def _ranges(path: Path) -> list[tuple]:
    return _read(path, "SELECT rowid, start, end, text, globalTid FROM NVTX_EVENTS WHERE eventType = 59")


def _ops(path: Path) -> list[tuple]:
    """(start, end, kind, call start, call end, call globalTid) of every GPU op."""
    calls = {(g - g % (1 << 24), c): (s, e, g) for s, e, g, c in _read(
        path, "SELECT start, end, globalTid, correlationId FROM CUPTI_ACTIVITY_KIND_RUNTIME")}
    out = []
    for table, kind in (("KERNEL", "kernel"), ("MEMCPY", "copy"), ("MEMSET", "copy")):
        if _has(path, f"CUPTI_ACTIVITY_KIND_{table}"):
            for s, e, c, p in _read(path, f"SELECT start, end, correlationId, globalPid FROM CUPTI_ACTIVITY_KIND_{table}"):
                out.append((s, e, kind, *calls.get((p, c), (None, None, None))))
    return out


def _window_by_hand(path: Path, pattern: str) -> list[tuple[int, int]]:
    """Union over the instances named like ``pattern`` (outermost batches for "batches") not inside warmup_*,
    each from its start to the later of its end and the end of the GPU work it launched."""
    ranges, ops = _ranges(path), _ops(path)

    def inside(outer, s, e, g):
        return outer[4] == g and outer[1] <= s and e <= outer[2]

    warm = [r for r in ranges if fnmatch.fnmatchcase(r[3], "warmup_*")]
    kept = [r for r in ranges if not any(inside(w, r[1], r[2], r[4]) for w in warm)]
    if pattern == "batches":
        chosen = [r for r in kept if re.fullmatch(r"batch_.*", r[3])]
    else:
        chosen = [r for r in kept if fnmatch.fnmatchcase(r[3], pattern)]
    spans = []
    for r in chosen:
        ends = [o[1] for o in ops if o[5] is not None and inside(r, o[3], o[4], o[5])]
        spans.append((r[1], max([r[2], *ends])))
    if pattern == "batches":
        return [(min(s for s, _ in spans), max(e for _, e in spans))]
    return _union(spans)


def _clip(spans: list[tuple[int, int]], window: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return _union([(max(s, ws), min(e, we)) for s, e in spans for ws, we in window if min(e, we) > max(s, ws)])


@pytest.fixture(scope="module")
def sweep_windows() -> dict[tuple[str, str], dict]:
    def row(key: tuple[str, str]) -> dict:
        result = nsysan.utilization(SAMPLES[key[0]], window=key[1])
        assert result.ok and result.frame.height == 1, result.failures
        return result.frame.row(0, named=True)
    return Lazy([(name, window) for name in SAMPLES for window in ("forward", "batches", "h2d")], row)


@pytest.mark.parametrize("window", ["forward", "batches", "h2d"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_windows_busy_time_and_gaps_equal_brute_force(name, window, sweep_windows):
    path = SAMPLES[name]
    win = _window_by_hand(path, window)
    ops = _ops(path)
    kernels = _clip([(o[0], o[1]) for o in ops if o[2] == "kernel"], win)
    copies = _clip([(o[0], o[1]) for o in ops if o[2] == "copy"], win)
    busy = _clip([(o[0], o[1]) for o in ops], win)
    gaps = []
    for ws, we in win:
        mine = [sp for sp in busy if ws <= sp[0] and sp[1] <= we]
        gaps += [b[0] - a[1] for a, b in zip(mine, mine[1:])]
    window_ns = sum(e - s for s, e in win)
    busy_ns = sum(e - s for s, e in busy)
    idle_ns = window_ns - busy_ns
    r = sweep_windows[(name, window)]
    assert r["window_ns"] == window_ns
    assert r["kernel_busy_ns"] == sum(e - s for s, e in kernels)
    assert r["copy_busy_ns"] == sum(e - s for s, e in copies)
    assert r["busy_ns"] == busy_ns and r["idle_ns"] == idle_ns
    assert r["idle_gaps"] == len(gaps)
    g = np.array(gaps) / 1e3
    assert (r["gap_us_p50"], r["gap_us_p95"], r["gap_us_max"]) == pytest.approx(
        (np.percentile(g, 50), np.percentile(g, 95), g.max()), rel=1e-12)
    assert r["short_gap_idle_pct"] == pytest.approx(100 * sum(x for x in gaps if x < 10_000) / idle_ns, rel=1e-12)
    assert r["launch_gap_idle_pct"] == pytest.approx(100 * sum(x for x in gaps if x < 100_000) / idle_ns, rel=1e-12)
    assert r["utilization_pct"] == pytest.approx(100 * r["kernel_busy_ns"] / window_ns, rel=1e-12)
    kernel_ops = [(o[0], o[1]) for o in ops if o[2] == "kernel"]
    touching = [sp for sp in kernel_ops if any(sp[0] < we and sp[1] > ws or ws <= sp[0] < we for ws, we in win)]
    assert r["kernels"] == len(touching)
    assert r["kernel_sum_ns"] == sum(max(0, min(e, we) - max(s, ws)) for s, e in kernel_ops for ws, we in win)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_top_kernels_of_the_forward_window_equal_brute_force(name):
    """Per kernel short name: launches touching the window, time inside it, share of the kernel busy time; the
    ten with most time, ties by name."""
    path = SAMPLES[name]
    win = _window_by_hand(path, "forward")
    kernels = _read(path, "SELECT k.start, k.end, s.value FROM CUPTI_ACTIVITY_KIND_KERNEL AS k "
                          "JOIN StringIds AS s ON s.id = k.shortName")
    per_name: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s, e, kernel in kernels:
        inside = sum(max(0, min(e, we) - max(s, ws)) for ws, we in win)
        if any(s < we and e > ws or ws <= s < we for ws, we in win):
            per_name[kernel][0] += 1
            per_name[kernel][1] += inside
    busy = sum(e - s for s, e in _clip([(s, e) for s, e, _ in kernels], win))
    expected = sorted(per_name.items(), key=lambda kv: (-kv[1][1], kv[0]))[:10]
    top = nsysan.top_kernels(path, window="forward").frame
    assert top.select("name", "instances", "time_ns").rows() == [(k, n, t) for k, (n, t) in expected]
    assert top["busy_share_pct"].to_list() == pytest.approx([100 * t / busy for _, (_, t) in expected], rel=1e-12)


def test_forward_gaps_of_the_samples_are_short():
    """The samples' forward passes are strings of kernels a few tens of µs apart; the largest gap inside one
    forward pass is well under a millisecond (a gap across two batches would be 13-25 ms)."""
    for name, path in SAMPLES.items():
        if name.endswith("vit0x0x0"):
            continue
        r = _utilization(path, window="forward")
        assert 0 < r["gap_us_max"] < 1000, (name, r["gap_us_max"])


# -- compare and numa values: hand-built runs ---------------------------------------------------------------------------
def _run(path: Path, *, copy_ns: list[int], batch_ns: list[int], period: int, nbytes: int = 4000) -> Path:
    """batch_i every ``period`` ns lasting batch_ns[i], holding h2d [t + 10, t + 10 + copy_ns[i] + 40] that
    launches one copy of ``nbytes`` lasting copy_ns[i]."""
    b = ExportBuilder()
    for i, (c, d) in enumerate(zip(copy_ns, batch_ns, strict=True)):
        t = i * period
        b.range(f"batch_{i}", t, t + d)
        b.range("h2d", t + 10, t + 50 + c)
        cid = b.call(MAIN_TID, t + 20, t + 30, api="cudaMemcpyAsync")
        b.op(cid, t + 40, t + 40 + c, kind="memcpy", nbytes=nbytes)
    b.write(path)
    return path


LOCAL = dict(copy_ns=[100, 200, 100, 400, 100, 200], batch_ns=[500, 600, 700, 800, 900, 1000], period=2000)
REMOTE = dict(copy_ns=[200, 400, 200, 800, 200, 400], batch_ns=[550, 650, 750, 850, 950, 1050], period=3000)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> pl.DataFrame:
    folder = tmp_path_factory.mktemp("values")
    _run(folder / "pipeline_gpu0_numa0_vit1x1x1.sqlite", **LOCAL)
    _run(folder / "pipeline_gpu0_numa1_vit1x1x1.sqlite", **REMOTE)
    result = pooled(folder, lambda report: stage_observations(report, select=Selection(exclude_within=())), by=())
    assert result.ok, result.failures
    return result.frame


def _expected(run: dict) -> dict[tuple[str, str, str], float]:
    """Each compared value, computed from the lines of the case (ms, GB/s, 1/s)."""
    copy, batch, period = np.array(run["copy_ns"]), np.array(run["batch_ns"]), run["period"]
    h2d_range = copy + 40
    n = len(copy)
    return {
        ("batch_*", "range_ms", "mean"): batch.mean() / 1e6, ("batch_*", "range_ms", "p95"): np.percentile(batch, 95) / 1e6,
        ("h2d", "range_ms", "mean"): h2d_range.mean() / 1e6, ("h2d", "range_ms", "p95"): np.percentile(h2d_range, 95) / 1e6,
        # One copy per instance: projection = busy = its duration; the batch holds the same copy.
        ("h2d", "gpu_proj_ms", "mean"): copy.mean() / 1e6, ("h2d", "gpu_proj_ms", "p95"): np.percentile(copy, 95) / 1e6,
        ("h2d", "gpu_busy_ms", "mean"): copy.mean() / 1e6, ("batch_*", "gpu_proj_ms", "mean"): copy.mean() / 1e6,
        ("batch_*", "gpu_busy_ms", "p95"): np.percentile(copy, 95) / 1e6,
        # Bytes over copy time: 4000 B x n / sum of durations, in B/ns = GB/s.
        ("h2d", "bandwidth_gbps", "mean"): 4000 * n / copy.sum(),
        # Instances per second over first start -> last end.
        ("batch_*", "throughput_per_s", "mean"): n / (((n - 1) * period + batch[-1]) / 1e9),
    }


def test_compare_values_and_baseline_values_equal_the_hand_computation(pair):
    result = compare_groups(pair, by=["numa"], baseline={"numa": 0}, settings=Settings(resamples=200))
    local, remote = _expected(LOCAL), _expected(REMOTE)
    rows = {(r["stage"], r["metric"], r["statistic"]): r for r in result.filter(pl.col("numa") == 1).iter_rows(named=True)}
    base_rows = {(r["stage"], r["metric"], r["statistic"]): r
                 for r in result.filter(pl.col("numa") == 0).iter_rows(named=True)}
    for key in local:
        r = rows[key]
        assert r["value"] == pytest.approx(remote[key], rel=1e-12), key
        assert r["baseline_value"] == pytest.approx(local[key], rel=1e-12), key
        assert r["ratio"] == pytest.approx(remote[key] / local[key], rel=1e-12), key
        assert r["change_pct"] == pytest.approx(100 * (remote[key] / local[key] - 1), rel=1e-9, abs=1e-9), key
        assert (r["n"], r["baseline_n"]) == (6, 6)
        assert base_rows[key]["value"] == base_rows[key]["baseline_value"] == pytest.approx(local[key], rel=1e-12)
        assert base_rows[key]["verdict"] == "baseline"
        assert (base_rows[key]["ratio"], base_rows[key]["change_pct"]) == (1.0, 0.0)


def test_numa_local_and_remote_values_equal_the_hand_computation(pair):
    penalty = numa_penalty(pair, settings=Settings(resamples=200))
    local, remote = _expected(LOCAL), _expected(REMOTE)
    rows = {(r["stage"], r["metric"], r["statistic"]): r for r in penalty.iter_rows(named=True)}
    assert set(penalty["local_numa"]) == {0} and set(penalty["remote_numa"]) == {1}
    for key in local:
        r = rows[key]
        assert r["local_value"] == pytest.approx(local[key], rel=1e-12), key
        assert r["remote_value"] == pytest.approx(remote[key], rel=1e-12), key
        assert r["ratio"] == pytest.approx(remote[key] / local[key], rel=1e-12), key
        assert r["penalty_pct"] == pytest.approx(100 * (remote[key] / local[key] - 1), rel=1e-9, abs=1e-9), key
        assert (r["n_local"], r["n_remote"]) == (6, 6)


@pytest.mark.parametrize(("min_instances", "too_few"), [(6, False), (7, True)])
def test_min_instances_is_the_fewest_that_get_an_interval(pair, min_instances, too_few):
    result = compare_groups(pair, by=["numa"], baseline={"numa": 0},
                            settings=Settings(resamples=200, min_instances=min_instances))
    remote = result.filter(pl.col("numa") == 1)
    # Six instances a side: min_instances=6 is enough for an interval, 7 is not.
    assert (set(remote["verdict"]) == {"too few instances"}) is too_few
    assert remote["ci_low"].is_null().all() is too_few
    assert remote["ratio"].is_not_null().all()
    local, far = _expected(LOCAL), _expected(REMOTE)
    for r in remote.iter_rows(named=True):  # with an interval or without, the change is the ratio's
        key = (r["stage"], r["metric"], r["statistic"])
        if key in far:
            assert r["change_pct"] == pytest.approx(100 * (far[key] / local[key] - 1), rel=1e-9, abs=1e-9), key


# -- kernels: shares within each report ---------------------------------------------------------------------------------
def test_kernel_time_pct_is_a_share_of_each_report(tmp_path):
    paths = []
    for name, durations in (("a", {"gemm": 300, "relu": 100}), ("b", {"gemm": 50, "relu": 150})):
        b = ExportBuilder()
        for i, (kernel, d) in enumerate(durations.items()):
            b.launch(MAIN_TID, i, i + 1, 1000 * i, 1000 * i + d, name=kernel)
        paths.append(b.write(tmp_path / f"{name}.sqlite"))
    frame = nsysan.kernels(paths, select=EVERYTHING).frame
    got = {(r["report"], r["name"]): r["time_pct"] for r in frame.iter_rows(named=True)}
    # a: 300 / 400, 100 / 400; b: 50 / 200, 150 / 200 (never a share of both reports' 600 ns).
    assert got == pytest.approx({("a", "gemm"): 75.0, ("a", "relu"): 25.0, ("b", "gemm"): 25.0, ("b", "relu"): 75.0})
    pooled_frame = nsysan.kernels(paths, by=[], select=EVERYTHING).frame
    assert dict(zip(pooled_frame["name"], pooled_frame["time_pct"])) == pytest.approx({"gemm": 350 / 6, "relu": 250 / 6})
    with nsysan.open(paths[0]) as report:
        alone = kernel_summary(kernel_durations(report, select=EVERYTHING), by=())
    assert alone["time_pct"].to_list() == pytest.approx([75.0, 25.0])


def test_numa_heatmap_values_and_direction(pair):
    from nsysan.analyses.numa import numa_heatmap
    penalty = numa_penalty(pair, settings=Settings(resamples=200))
    local, remote = _expected(LOCAL), _expected(REMOTE)
    heat = numa_heatmap(penalty, metric="bandwidth_gbps", direction="Host-to-Device")
    key = ("h2d", "bandwidth_gbps", "mean")
    assert heat.columns[-4:] == ["local_numa", "remote_numa", "mean_penalty_pct", "h2d (Host-to-Device)"]
    assert heat["h2d (Host-to-Device)"].item() == pytest.approx(100 * (remote[key] / local[key] - 1), rel=1e-9)
    assert heat["mean_penalty_pct"].item() == heat["h2d (Host-to-Device)"].item()
    with pytest.raises(nsysan.NsysanError, match="no bandwidth_gbps/mean penalties here"):
        numa_heatmap(penalty, metric="bandwidth_gbps", direction="Device-to-Host")
    times = numa_heatmap(penalty, metric="range_ms", statistic="p95")
    assert times.columns[-2:] == ["batch_*", "h2d"]
    for stage in ("batch_*", "h2d"):
        k = (stage, "range_ms", "p95")
        assert times[stage].item() == pytest.approx(100 * (remote[k] / local[k] - 1), rel=1e-9)


def test_numa_penalty_without_pair_keys_and_with_nodes_named_by_text(pair):
    """Runs that differ in nothing but the node (no pair keys at all) still carry where the local node came from;
    nodes named by text are ordered as numbers (node 2 before node 10)."""
    from nsysan.analyses.compare import SAMPLE_COLUMNS

    bare = pair.select(*SAMPLE_COLUMNS, "report", "numa")
    keyed, plain = numa_penalty(pair, settings=Settings(resamples=200)), numa_penalty(bare, settings=Settings(resamples=200))
    assert plain["local_basis"].to_list() == keyed["local_basis"].to_list() and plain["local_basis"][0]
    assert plain.select("local_numa", "remote_numa", "local_value", "remote_value").rows() == \
        keyed.select("local_numa", "remote_numa", "local_value", "remote_value").rows()
    remote = bare.filter(pl.col("numa") == 1)
    three = pl.concat([bare.filter(pl.col("numa") == 0),
                       remote.with_columns(numa=pl.lit(10, pl.Int64), report=pl.lit("r10")),
                       remote.with_columns(numa=pl.lit(2, pl.Int64), report=pl.lit("r2"))], how="vertical_relaxed").with_columns(pl.col("numa").cast(pl.String))
    penalty = numa_penalty(three, settings=Settings(resamples=200))
    assert penalty["remote_numa"].unique(maintain_order=True).to_list() == ["2", "10"]


def test_numa_pair_groups_without_a_sensitivity_come_last(pair):
    """A pair group whose range times are all 0 has no CPU-time penalty, so no sensitivity: it is listed after
    every group that has one, whatever its name."""
    zero = pair.with_columns(model=pl.lit("a_zero"), report=pl.col("report") + "_zero",
                             value=pl.when(pl.col("metric") == "range_ns").then(0.0).otherwise(pl.col("value")))
    both = pl.concat([pair.with_columns(model=pl.lit("b_timed")), zero], how="vertical_relaxed")
    penalty = numa_penalty(both, settings=Settings(resamples=200))
    assert penalty["model"].unique(maintain_order=True).to_list() == ["b_timed", "a_zero"]
    assert penalty.filter(pl.col("model") == "a_zero")["sensitivity_pct"].is_null().all()


def test_bandwidth_of_nested_copies_zero_length_copies_and_zero_bytes(tmp_path):
    """H2D: a 1 MB copy [0, 100) holding another 1 MB copy [20, 30) and a 1 MB copy of no duration at 200: the
    union is 100 ns, the summed time 110 ns, and the per-copy rates leave the zero-length copy out. Memsets of
    0 B: no bytes at all, so none of them are tiny bytes."""
    b = ExportBuilder()
    for i, (start, end) in enumerate([(0, 100), (20, 30), (200, 200)]):
        cid = b.call(MAIN_TID, i, i + 1, api="cudaMemcpyAsync")
        b.op(cid, 1000 + start, 1000 + end, kind="memcpy", nbytes=1_000_000)
    for i in range(2):
        cid = b.call(MAIN_TID, 10 + i, 11 + i, api="cudaMemsetAsync")
        b.op(cid, 2000 + 10 * i, 2005 + 10 * i, kind="memset", nbytes=0)
    path = b.write(tmp_path / "nested.sqlite")
    with nsysan.open(path) as report:
        assert set(copy_trace(report, select=EVERYTHING)["pid"]) == {MAIN_PID}
    frame = nsysan.bandwidth(path, select=EVERYTHING).frame
    h2d = frame.filter(pl.col("direction") == "Host-to-Device").row(0, named=True)
    assert (h2d["copies"], h2d["bytes_total"], h2d["time_total_ns"], h2d["time_union_ns"]) == (3, 3_000_000, 110, 100)
    assert h2d["bandwidth_union_gbps"] == pytest.approx(3_000_000 / 100)
    assert (h2d["copy_gbps_min"], h2d["copy_gbps_max"]) == pytest.approx((1_000_000 / 100, 1_000_000 / 10))
    memset = frame.filter(pl.col("direction") == "Memset").row(0, named=True)
    assert (memset["copies"], memset["bytes_total"], memset["tiny_copies"]) == (2, 0, 2)
    assert memset["tiny_bytes_pct"] == 0.0 and memset["bandwidth_gbps"] == 0.0


def test_bandwidth_of_an_export_with_memsets_only(tmp_path):
    b = ExportBuilder()
    cid = b.call(MAIN_TID, 0, 1, api="cudaMemsetAsync")
    b.op(cid, 100, 150, kind="memset", nbytes=5000)
    frame = nsysan.bandwidth(b.write(tmp_path / "memset_only.sqlite"), select=EVERYTHING).frame
    assert frame.select("direction", "copies", "bytes_total", "time_total_ns").rows() == [("Memset", 1, 5000, 50)]


def test_stage_observations_without_copies_keep_their_columns_typed(tmp_path):
    b = ExportBuilder()
    b.range("batch_0", 0, 100)
    b.launch(MAIN_TID, 10, 20, 30, 40)
    with nsysan.open(b.write(tmp_path / "kernels_only.sqlite")) as report:
        observed = stage_observations(report, select=EVERYTHING)
    assert observed.schema["direction"] == pl.String and observed["direction"].is_null().all()
    assert set(observed["metric"]) == {"range_ns", "gpu_proj_ns", "gpu_busy_ns", "cycle_ns"}


def test_utilization_of_a_range_window_follows_the_selection(tmp_path):
    """The instances of a range window are those the selection keeps: the warm-up's forward counts only when
    every instance is asked for."""
    b = ExportBuilder()
    b.range("warmup_0", 0, 100)
    b.range("forward", 10, 90)
    b.range("batch_1", 200, 300)
    b.range("forward", 210, 290)
    b.launch(MAIN_TID, 20, 25, 30, 60)
    b.launch(MAIN_TID, 220, 225, 230, 250)
    path = b.write(tmp_path / "windows.sqlite")
    default = nsysan.utilization(path, window="forward").frame.row(0, named=True)
    everything = nsysan.utilization(path, window="forward", select=EVERYTHING).frame.row(0, named=True)
    assert (default["window_ns"], default["kernel_busy_ns"]) == (80, 20)
    assert (everything["window_ns"], everything["kernel_busy_ns"]) == (160, 50)
