"""Ranks, communication and skew on the real 2-GPU DDP capture (tests/fixtures/h200x2), each number checked
against an independent computation written here in plain SQL over the export and plain Python (no nsysan
interval, attribution or selection code), and default-rule parity with nsys stats.

The capture: two processes (pid 648 on GPU 0, pid 649 on GPU 1), NVTX `warmup_0..4` then `step_5..24`, each
holding data / forward / backward / optimizer; NCCL kernels on stream 17 of each GPU; backward's kernels are
launched from PyTorch's autograd thread.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import nsysan
from builders import ExportBuilder
from nsysan.cli import app
from nsysan.selection import Selection
from support import nsys_stats

DDP = Path(__file__).parent / "fixtures" / "h200x2" / "ddp_resnet18_2gpu.sqlite"
PIDS = (648, 649)


# -- the independent side ---------------------------------------------------------------------------------------
def sql(query: str, *args) -> list[tuple]:
    con = sqlite3.connect(f"file:{DDP}?mode=ro", uri=True)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def ranges(pid: int, pattern: str) -> list[tuple[int, int]]:
    """(start, end) of the push/pop ranges of process ``pid`` whose name matches the SQL LIKE ``pattern``."""
    return sql("SELECT e.start, e.\"end\" FROM NVTX_EVENTS e LEFT JOIN StringIds s ON s.id = e.textId "
               "WHERE e.eventType = 59 AND (e.globalTid >> 24) & 16777215 = ? AND coalesce(s.value, e.text) LIKE ? "
               "ORDER BY e.start", pid, pattern)


def warm(pid: int) -> list[tuple[int, int]]:
    return ranges(pid, "warmup_%")


def inside(t: int, spans: list[tuple[int, int]]) -> bool:
    return any(s <= t <= e for s, e in spans)


def union(spans) -> int:
    total, reach = 0, None
    for s, e in sorted(spans):
        if reach is None or s > reach:
            total += e - s
            reach = e
        elif e > reach:
            total += e - reach
            reach = e
    return total


def overlap(a, b) -> int:
    """Length of (union of a) ∩ (union of b), by sweeping the sorted boundaries."""
    events = sorted([(s, 1, 0) for s, _ in a] + [(e, -1, 0) for _, e in a]
                    + [(s, 0, 1) for s, _ in b] + [(e, 0, -1) for _, e in b])
    depth_a = depth_b = 0
    total, last = 0, None
    for t, da, db in events:
        if last is not None and depth_a > 0 and depth_b > 0:
            total += t - last
        depth_a, depth_b, last = depth_a + da, depth_b + db, t
    return total


def kernels(pid: int | None = None, device: int | None = None) -> list[tuple[int, int, str]]:
    """(start, end, short name) of the kernels of a process and/or on a device, outside warm-up (by start)."""
    rows = sql("SELECT k.start, k.\"end\", s.value, (k.globalPid >> 24) & 16777215, k.deviceId "
               "FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON s.id = k.shortName ORDER BY k.start")
    warmups = {p: warm(p) for p in PIDS}
    return [(s, e, n) for s, e, n, p, d in rows if (pid is None or p == pid) and (device is None or d == device)
            and not inside(s, warmups[p])]


def nccl(pid: int) -> list[tuple[int, int, str]]:
    return [k for k in kernels(pid) if k[2].startswith("ncclDevKernel_")]


# -- ranks ------------------------------------------------------------------------------------------------------
def test_ranks_are_the_processes_on_their_gpus():
    devices = dict(sql("SELECT (globalPid >> 24) & 16777215, min(deviceId) FROM CUPTI_ACTIVITY_KIND_KERNEL GROUP BY 1"))
    assert devices == {648: 0, 649: 1}
    with nsysan.open(DDP) as report:
        from nsysan import ranks
        found = ranks.processes(report)
    assert found.select("pid", "device_id", "rank").rows() == [(648, 0, 0), (649, 1, 1)]
    assert set(found["rank_source"]) == {"device order"}  # the capture's NCCL payloads are empty


def test_latency_by_rank_counts_each_ranks_own_instances():
    frame = nsysan.latency(DDP, by=["rank"]).frame
    for rank, pid in enumerate(PIDS):
        steps = ranges(pid, "step_%")
        assert len(steps) == 20
        for stage in ("data", "forward", "backward", "optimizer"):
            expected = sum(inside(s, steps) for s, _ in ranges(pid, stage))
            got = frame.filter((pl.col("rank") == rank) & (pl.col("range") == stage))["instances"].item()
            assert got == expected == 20, (rank, stage)
        assert frame.filter((pl.col("rank") == rank) & (pl.col("range") == "step_*"))["instances"].item() == 20
    # Without the rank, the two processes' instances pool, and a note says so.
    pooled = nsysan.latency(DDP)
    assert pooled.frame.filter(pl.col("range") == "forward")["instances"].item() == 40
    assert any("several ranks" in n for n in pooled.notes)


def test_default_rule_matches_nsys_stats(nsys, tmp_path):
    theirs = nsys_stats(nsys, DDP, ("nvtx_gpu_proj_sum",), tmp_path, schema_overrides={"Range": pl.String})[
        "nvtx_gpu_proj_sum"]
    ours = nsysan.latency(DDP, select=Selection.everything()).frame.filter(pl.col("gpu_instances") > 0)
    got = {(r["range"], r["style"]): (r["gpu_instances"], r["gpu_proj_total_ns"], r["gpu_ops_total"])
           for r in ours.iter_rows(named=True)}
    expected = {(r["Range"], r["Style"]): (r["Range Instances"], r["Total Proj Time (ns)"], r["Total GPU Ops"])
                for r in theirs.iter_rows(named=True)}
    assert got == expected


def test_process_attribution_gives_backward_its_autograd_kernels():
    thread = nsysan.latency(DDP, by=["rank"])
    process = nsysan.latency(DDP, by=["rank"], attribution="process").frame
    assert any("backward" in n and "attribution='process'" in n for n in thread.notes)
    for rank, pid in enumerate(PIDS):
        steps = ranges(pid, "step_%")
        # Every op launched by any thread of the process while each measured backward was open.
        ops = sql("""SELECT r.start, o.start, o."end" FROM CUPTI_ACTIVITY_KIND_RUNTIME r JOIN (
                         SELECT correlationId, globalPid, start, "end" FROM CUPTI_ACTIVITY_KIND_KERNEL UNION ALL
                         SELECT correlationId, globalPid, start, "end" FROM CUPTI_ACTIVITY_KIND_MEMCPY UNION ALL
                         SELECT correlationId, globalPid, start, "end" FROM CUPTI_ACTIVITY_KIND_MEMSET) o
                       ON o.correlationId = r.correlationId AND (r.globalTid >> 24) = (o.globalPid >> 24)
                     WHERE (r.globalTid >> 24) & 16777215 = ?""", pid)
        projections = []
        for start, end in ranges(pid, "backward"):
            if not inside(start, steps):
                continue
            mine = [(s, e) for call, s, e in ops if start <= call <= end]
            projections.append(max(e for _, e in mine) - min(s for s, _ in mine))
        row = process.filter((pl.col("rank") == rank) & (pl.col("range") == "backward")).row(0, named=True)
        assert row["gpu_proj_ms_mean"] == pytest.approx(np.mean(projections) / 1e6, rel=1e-9)
        assert row["gpu_proj_ms_mean"] > 5  # the autograd thread's work: milliseconds, not 0.001 ms


# -- throughput and utilization per rank ---------------------------------------------------------------------------
def test_throughput_counts_steps_once_and_sums_samples_over_ranks():
    frame = nsysan.throughput(DDP, batch_size=256).frame.row(0, named=True)
    first = min(s for pid in PIDS for s, _ in ranges(pid, "step_%"))
    last = max(e for pid in PIDS for _, e in ranges(pid, "step_%"))
    assert (frame["ranks"], frame["batches"], frame["window_ns"]) == (2, 20, last - first)
    assert frame["samples_per_s"] == pytest.approx(2 * 256 * 20 / ((last - first) / 1e9))
    per_rank = nsysan.throughput(DDP, by=["rank"], batch_size=256).frame
    assert per_rank["batches"].to_list() == [20, 20]


def test_utilization_window_is_each_ranks_own_backward_on_its_own_gpu():
    frame = nsysan.utilization(DDP, by=["rank"], window="backward").frame
    for rank, pid in enumerate(PIDS):
        steps = ranges(pid, "step_%")
        # Each measured backward, until its own thread's GPU work ended (nsys's rule), if later.
        spans = []
        for start, end in ranges(pid, "backward"):
            if inside(start, steps):
                own_end = sql("""SELECT max(o."end") FROM CUPTI_ACTIVITY_KIND_RUNTIME r JOIN (
                                   SELECT correlationId, globalPid, "end" FROM CUPTI_ACTIVITY_KIND_KERNEL UNION ALL
                                   SELECT correlationId, globalPid, "end" FROM CUPTI_ACTIVITY_KIND_MEMCPY UNION ALL
                                   SELECT correlationId, globalPid, "end" FROM CUPTI_ACTIVITY_KIND_MEMSET) o
                                 ON o.correlationId = r.correlationId AND (r.globalTid >> 24) = (o.globalPid >> 24)
                                 WHERE r.globalTid = (SELECT globalTid FROM NVTX_EVENTS WHERE start = ? LIMIT 1)
                                   AND r.start >= ? AND r."end" <= ?""", start, start, end)[0][0]
                spans.append((start, max(end, own_end or end)))
        own = [(s, e) for s, e, _ in sql("SELECT k.start, k.\"end\", 0 FROM CUPTI_ACTIVITY_KIND_KERNEL k "
                                         "WHERE (k.globalPid >> 24) & 16777215 = ?", pid)]
        row = frame.filter(pl.col("rank") == rank).row(0, named=True)
        assert (row["device_id"], row["window_ns"]) == (rank, union(spans))
        assert row["kernel_busy_ns"] == overlap(own, spans)
    assert frame.filter(pl.col("rank") == 0)["kernel_busy_ns"].item() == pytest.approx(71.0e6, rel=0.01)


# -- communication ------------------------------------------------------------------------------------------------
def test_comm_per_rank_and_collective_equals_an_independent_union():
    frame = nsysan.comm(DDP).frame
    for rank, pid in enumerate(PIDS):
        mine = nccl(pid)
        compute = [(s, e) for s, e, n in kernels(device=rank) if not n.startswith("ncclDevKernel_")]
        for collective in ("AllReduce", "Broadcast", "AllGather", "all"):
            calls = [(s, e) for s, e, n in mine if collective == "all" or n.startswith(f"ncclDevKernel_{collective}_")]
            row = frame.filter((pl.col("rank") == rank) & (pl.col("collective") == collective)).row(0, named=True)
            assert row["calls"] == len(calls)
            assert row["comm_ms"] == pytest.approx(union(calls) / 1e6, abs=1e-9)
            assert row["compute_ms"] == pytest.approx(union(compute) / 1e6, abs=1e-9)
            assert row["overlap_ms"] == pytest.approx(overlap(calls, compute) / 1e6, abs=1e-9)
            assert row["exposed_comm_ms"] == pytest.approx((union(calls) - overlap(calls, compute)) / 1e6, abs=1e-9)
    assert frame.filter((pl.col("rank") == 0) & (pl.col("collective") == "AllReduce"))["calls"].item() == 60
    assert frame.group_by("rank").agg(pl.col("device_id").unique()).sort("rank").rows() == [(0, [0]), (1, [1])]


def _clipped(spans, window) -> list[tuple[int, int]]:
    return [(max(s, ws), min(e, we)) for s, e in spans for ws, we in window if min(e, we) > max(s, ws)]


def test_comm_per_stage_is_the_communication_inside_that_stages_instances():
    """by_stage: each rank's backward instances (outside warm-up) are the window; calls are the NCCL kernels
    overlapping it, times are unions clipped to it."""
    frame = nsysan.comm(DDP, by_stage=True).frame
    assert {"forward", "backward", "optimizer", "step_*"} <= set(frame["stage"])
    for rank, pid in enumerate(PIDS):
        warmups = warm(pid)
        window = [(s, e) for s, e in ranges(pid, "backward") if not inside(s, warmups)]
        assert len(window) == 20
        mine = [(s, e) for s, e, _ in nccl(pid)]
        compute = [(s, e) for s, e, n in kernels(device=rank) if not n.startswith("ncclDevKernel_")]
        row = frame.filter((pl.col("rank") == rank) & (pl.col("stage") == "backward")
                           & (pl.col("collective") == "all")).row(0, named=True)
        comm, busy = _clipped(mine, window), _clipped(compute, window)
        assert row["calls"] == sum(1 for s, e in mine if any(s < we and e > ws for ws, we in window))
        assert row["comm_ms"] == pytest.approx(union(comm) / 1e6, abs=1e-9) and row["comm_ms"] > 0
        assert row["compute_ms"] == pytest.approx(union(busy) / 1e6, abs=1e-9)
        assert row["overlap_ms"] == pytest.approx(overlap(comm, busy) / 1e6, abs=1e-9)
        assert row["exposed_comm_ms"] == pytest.approx((union(comm) - overlap(comm, busy)) / 1e6, abs=1e-9)


def _matched_calls():
    """Rank 0's k-th and rank 1's k-th NCCL kernel are the same call (one NCCL stream per rank here)."""
    a, b = nccl(648), nccl(649)
    assert len(a) == len(b) == 104 and [n for *_, n in a] == [n for *_, n in b]
    return list(zip(a, b))


def test_skew_lateness_waits_and_stragglers_equal_an_independent_matching():
    calls = _matched_calls()
    frame = nsysan.skew(DDP).frame
    for rank in (0, 1):
        for collective in ("AllReduce", "Broadcast", "all"):
            chosen = [c for c in calls if collective == "all" or c[0][2].startswith(f"ncclDevKernel_{collective}_")]
            late = [c[rank][0] - min(c[0][0], c[1][0]) for c in chosen]
            wait = [min(max(c[0][0], c[1][0]) - c[rank][0], c[rank][1] - c[rank][0]) for c in chosen]
            last = sum(c[rank][0] > c[1 - rank][0] for c in chosen)
            row = frame.filter((pl.col("rank") == rank) & (pl.col("collective") == collective)).row(0, named=True)
            assert row["calls"] == len(chosen)
            assert row["arrival_late_ms_p50"] == pytest.approx(np.percentile(late, 50) / 1e6, abs=1e-9)
            assert row["arrival_late_ms_p95"] == pytest.approx(np.percentile(late, 95) / 1e6, abs=1e-9)
            assert row["wait_ms_total"] == pytest.approx(sum(wait) / 1e6, abs=1e-9)
            assert row["straggler_calls"] == last
    # The straggler the capture is known for: rank 1 reaches each AllReduce about 1.2 ms after rank 0.
    slow = frame.filter((pl.col("rank") == 1) & (pl.col("collective") == "AllReduce")).row(0, named=True)
    assert 1.0 < slow["arrival_late_ms_p50"] < 1.5 and slow["straggler_calls"] > 50


def test_skew_per_step_names_the_straggler_of_every_step():
    calls = _matched_calls()
    frame_steps = nsysan.skew(DDP, per_step=True).frame
    assert frame_steps["step"].to_list() == [f"step_{i}" for i in range(5, 25)]
    spans = {name: (s, e) for (s, e), name in zip(ranges(648, "step_%"), [f"step_{i}" for i in range(5, 25)])}
    for row in frame_steps.iter_rows(named=True):
        s, e = spans[row["step"]]
        mine = [c for c in calls if s <= c[0][0] <= e]
        lasts = [sum(c[r][0] > c[1 - r][0] for c in mine) for r in (0, 1)]
        assert row["calls"] == len(mine)
        assert row["straggler_rank"] == int(np.argmax(lasts)) and row["straggler_calls"] == max(lasts)


def test_bus_bandwidth_from_a_given_message_size():
    calls = _matched_calls()
    size = 25_000_000
    allreduce = [c for c in calls if c[0][2].startswith("ncclDevKernel_AllReduce_")]
    transfer = sum(max(c[0][1], c[1][1]) - max(c[0][0], c[1][0]) for c in allreduce)
    algbw = size * len(allreduce) / transfer
    frame = nsysan.skew(DDP, message_bytes={"AllReduce": size}).frame
    row = frame.filter((pl.col("rank") == 0) & (pl.col("collective") == "AllReduce")).row(0, named=True)
    assert row["algbw_gbps"] == pytest.approx(algbw)
    assert row["busbw_gbps"] == pytest.approx(algbw * 2 * (2 - 1) / 2)  # NCCL's AllReduce factor for n = 2
    assert frame.filter(pl.col("collective") == "Broadcast")["busbw_gbps"].is_null().all()  # size unknown: n/a
    comm = nsysan.comm(DDP, message_bytes=size).frame
    assert comm.filter((pl.col("rank") == 1) & (pl.col("collective") == "AllReduce"))["busbw_gbps"].item() == \
        pytest.approx(algbw)


def test_cli_answers_per_rank():
    runner = CliRunner()
    for args in (["latency", "--by", "rank"], ["utilization", "--by", "rank", "--window", "backward"], ["comm"],
                 ["skew"], ["skew", "--per-step"], ["latency", "--attribution", "process", "--by", "rank"]):
        result = runner.invoke(app, [*args, str(DDP), "-f", "csv"])
        assert result.exit_code == 0, (args, result.output)
        frame = pl.read_csv(result.stdout.encode())
        assert frame.height > 0
        if "--per-step" not in args:
            assert set(frame["rank"].drop_nulls()) == {0, 1}, args
    bad = runner.invoke(app, ["comm", str(DDP), "--message-bytes", "lots"])
    assert bad.exit_code == 1 and "--message-bytes" in bad.stderr


# -- copies between devices (hand-built) ---------------------------------------------------------------------------
def test_peer_to_peer_bandwidth_by_source_and_destination_device(tmp_path):
    b = ExportBuilder()
    for i, (src, dst, nbytes) in enumerate([(0, 1, 4_000_000), (0, 1, 6_000_000), (1, 0, 2_000_000)]):
        cid = b.call(101, 10 * i, 10 * i + 5, api="cudaMemcpyPeerAsync")
        b.op(cid, 1000 + 1000 * i, 1000 + 1000 * i + 500, kind="memcpy", nbytes=nbytes, device=src)
    path = b.write(tmp_path / "p2p.sqlite")
    con = sqlite3.connect(path)
    con.execute("INSERT INTO ENUM_CUDA_MEMCPY_OPER VALUES (10, 'CUDA_MEMCPY_KIND_PTOP', 'Peer-to-Peer')")
    for i, (src, dst) in enumerate([(0, 1), (0, 1), (1, 0)]):
        con.execute("UPDATE CUPTI_ACTIVITY_KIND_MEMCPY SET copyKind = 10, srcKind = 2, dstKind = 2, srcDeviceId = ?, "
                    "dstDeviceId = ? WHERE rowid = ?", (src, dst, i + 1))
    con.commit()
    con.close()
    frame = nsysan.bandwidth(path, by=["src_device_id", "dst_device_id"]).frame
    got = {(r["src_device_id"], r["dst_device_id"]): (r["direction"], r["bytes_total"], r["bandwidth_gbps"])
           for r in frame.iter_rows(named=True)}
    # GPU 0 -> 1: 10 MB in 2 x 500 ns of copy time = 10,000 B/ns (GB/s); 1 -> 0: 2 MB in 500 ns.
    assert got == {(0, 1): ("Peer-to-Peer", 10_000_000, pytest.approx(10_000_000 / 1000)),
                   (1, 0): ("Peer-to-Peer", 2_000_000, pytest.approx(2_000_000 / 500))}


def test_comm_without_nvtx_ranges_counts_every_nccl_kernel(tmp_path):
    """An export without NVTX ranges has no steps and no warm-up to leave out: every NCCL kernel counts."""
    import shutil

    path = tmp_path / DDP.name
    shutil.copy(DDP, path)
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE NVTX_EVENTS")
    frame = nsysan.comm(path).frame
    everything = sql("SELECT (k.globalPid >> 24) & 16777215, count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k "
                     "JOIN StringIds s ON s.id = k.shortName WHERE s.value LIKE 'ncclDevKernel%' GROUP BY 1 ORDER BY 1")
    got = frame.filter(pl.col("collective") == "all").sort("rank").select("calls").to_series().to_list()
    assert got == [n for _, n in everything] and got[0] > len(nccl(PIDS[0]))
    calls = nsysan.collective_calls(path).frame
    assert calls["step"].is_null().all() and calls.height == sum(got)
