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


# -- calls across three ranks (hand-built) -------------------------------------------------------------------------
#: pid -> GPU: ranks follow the devices (no NCCL payload, no sidecar), so rank order is not pid order.
THREE = {13: 0, 11: 1, 12: 2}
ALLREDUCE, ALLGATHER = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096>)", \
    "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096>)"
#: Per rank, (stream, kernel, start, end) of its NCCL kernels. Stream 20 is every rank's first NCCL stream
#: (lane 0, AllReduce), stream 30 its second (lane 1, AllGather). Rank 1 issues its second AllGather before its
#: second AllReduce, the other ranks after it: only the k-th kernel of a lane matches across ranks. The second
#: AllGather's last arrival is a zero-length kernel (no transfer time: no bandwidth); the first one's transfer
#: takes 1 ns; rank 0's third AllReduce has no partner on the other ranks.
NCCL_KERNELS = {
    0: [(20, ALLREDUCE, 100, 200), (30, ALLGATHER, 500, 531), (20, ALLREDUCE, 1000, 1100), (30, ALLGATHER, 1500, 1505),
        (20, ALLREDUCE, 2000, 2100)],
    1: [(20, ALLREDUCE, 130, 200), (30, ALLGATHER, 520, 531), (30, ALLGATHER, 900, 950), (20, ALLREDUCE, 1010, 1100)],
    2: [(20, ALLREDUCE, 160, 205), (30, ALLGATHER, 530, 531), (20, ALLREDUCE, 1005, 1120), (30, ALLGATHER, 1510, 1510)],
}
COMPUTE = (150, 180)  # one compute kernel on every GPU, under the first AllReduce
STEPS = {"step_1": (0, 800), "step_2": (800, 2500)}
SIZES = {"AllReduce": 1000, "AllGather": 300}
BUS = {"AllReduce": lambda n: 2 * (n - 1) / n, "AllGather": lambda n: (n - 1) / n}  # NCCL's PERFORMANCE.md


def three_ranks(tmp_path: Path) -> Path:
    b = ExportBuilder()
    pid_of = {rank: pid for rank, pid in enumerate(sorted(THREE, key=THREE.get))}
    for rank, kernels_of_rank in NCCL_KERNELS.items():
        pid = pid_of[rank]
        for name, (start, end) in STEPS.items():
            b.range(name, start, end, pid=pid)
        for stream, name, start, end in [(7, "gemm_kernel", *COMPUTE), *kernels_of_rank]:
            cid = b.call(101, start - 5, start - 1, pid=pid)
            b.op(cid, start, end, name=name, pid=pid, device=THREE[pid], stream=stream)
    return b.write(tmp_path / "three_ranks.sqlite")


def expected_calls(warm: tuple[str, ...] = ()) -> list[dict]:
    """The calls by the module's rule, in plain Python: lane = order of a rank's NCCL streams by first use,
    k = position on it; ``call`` numbers (lane, k) in order; calls in the ``warm`` steps are left out."""
    def step_of(t: int) -> str | None:
        return next((n for n, (s, e) in STEPS.items() if s <= t <= e), None)

    by_call: dict[tuple[int, int], dict[int, tuple]] = {}
    for rank, kernels_of_rank in NCCL_KERNELS.items():
        kept = [k for k in kernels_of_rank if step_of(k[2]) not in warm]
        lanes = list(dict.fromkeys(k[0] for k in sorted(kept, key=lambda k: k[2])))
        for lane, stream in enumerate(lanes):
            for position, (_, name, start, end) in enumerate(sorted(k for k in kept if k[0] == stream)):
                by_call.setdefault((lane, position), {})[rank] = (name, stream, start, end, step_of(start))
    rows = []
    for call, key in enumerate(sorted(by_call)):
        members = by_call[key]
        first = min(m[2] for m in members.values())
        last_start, last_end = max(m[2] for m in members.values()), max(m[3] for m in members.values())
        n = len(members)
        for rank, (name, stream, start, end, step) in sorted(members.items()):
            collective = name.split("_")[1]
            algbw = SIZES[collective] / (last_end - last_start) if last_end > last_start else None
            pid = next(p for p, d in THREE.items() if d == rank)
            rows.append({"call": call, "collective": collective, "rank": rank, "pid": pid, "device_id": rank,
                         "stream_id": stream, "start_ns": start, "end_ns": end, "step": step,
                         "late_ns": start - first, "wait_ns": min(last_start - start, end - start),
                         "last": start == last_start and n > 1, "ranks": n, "message_bytes": SIZES[collective],
                         "algbw_gbps": algbw,
                         "busbw_gbps": algbw * BUS[collective](n) if algbw is not None and n > 1 else None})
    return rows


def approx_rows(rows: list[dict]) -> list[dict]:
    return [{k: pytest.approx(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def per_rank_and_collective(calls: list[dict]):
    """(rank, collective, that rank's calls of it) in the order the summaries list them: by rank, ``all`` first."""
    for rank in (0, 1, 2):
        for collective in ("all", "AllGather", "AllReduce"):
            yield rank, collective, [c for c in calls if c["rank"] == rank and collective in ("all", c["collective"])]


def pooled_bandwidth(calls: list[dict], bw: str) -> float:
    """NCCL's bandwidth over several calls: their bytes over their summed transfer times, of the calls that have it."""
    having = [c for c in calls if c[bw] is not None]
    return sum(c["message_bytes"] for c in having) / sum(c["message_bytes"] / c[bw] for c in having)


def test_calls_match_across_three_ranks_by_lane_and_position(tmp_path):
    path = three_ranks(tmp_path)
    frame = nsysan.collective_calls(path, message_bytes=SIZES).frame
    expected = expected_calls()
    assert [c["ranks"] for c in expected if c["rank"] == 0] == [3, 3, 1, 3, 3]  # the test's premise
    assert frame.select(list(expected[0])).to_dicts() == approx_rows(expected)


def test_warm_up_steps_of_a_chosen_selection_leave_their_calls_out(tmp_path):
    path = three_ranks(tmp_path)
    select = Selection(exclude_within=("step_1",))
    frame = nsysan.collective_calls(path, message_bytes=SIZES, select=select).frame
    expected = expected_calls(warm=("step_1",))
    assert frame.select(list(expected[0])).to_dicts() == approx_rows(expected)
    comm = nsysan.comm(path, message_bytes=SIZES, select=select).frame
    row = comm.filter((pl.col("rank") == 0) & (pl.col("collective") == "all")).row(0, named=True)
    assert row["calls"] == sum(1 for c in expected if c["rank"] == 0)
    assert row["algbw_gbps"] == pytest.approx(pooled_bandwidth([c for c in expected if c["rank"] == 0], "algbw_gbps"))


def test_skew_of_three_ranks_per_rank_and_collective(tmp_path):
    path = three_ranks(tmp_path)
    calls = expected_calls()
    frame = nsysan.skew(path, message_bytes=SIZES).frame
    order = []
    for rank, collective, mine in per_rank_and_collective(calls):
        order.append((rank, collective))
        sized = [c for c in mine if c["algbw_gbps"] is not None]
        row = frame.filter((pl.col("rank") == rank) & (pl.col("collective") == collective)).row(0, named=True)
        late = [c["late_ns"] / 1e6 for c in mine]
        assert row["calls"] == len(mine)
        assert (row["arrival_late_ms_p50"], row["arrival_late_ms_p95"]) == pytest.approx(
            (np.percentile(late, 50), np.percentile(late, 95)))
        assert row["wait_ms_total"] == pytest.approx(sum(c["wait_ns"] for c in mine) / 1e6)
        assert row["straggler_calls"] == sum(c["last"] for c in mine)
        assert row["message_bytes"] == pytest.approx(np.mean([c["message_bytes"] for c in sized]))
        for bw in ("algbw_gbps", "busbw_gbps"):
            assert row[bw] == pytest.approx(pooled_bandwidth(mine, bw)), (rank, collective, bw)
    assert frame.select("rank", "collective").rows() == order


def test_straggler_per_step_of_three_ranks(tmp_path):
    path = three_ranks(tmp_path)
    calls = expected_calls()
    frame = nsysan.skew(path, per_step=True).frame
    assert frame["step"].to_list() == ["step_1", "step_2"]
    for row in frame.iter_rows(named=True):
        mine = [c for c in calls if c["step"] == row["step"]]
        per_rank = {r: [c for c in mine if c["rank"] == r] for r in (0, 1, 2)}
        # Most last arrivals, then the larger total lateness.
        straggler = max(per_rank, key=lambda r: (sum(c["last"] for c in per_rank[r]),
                                                 sum(c["late_ns"] for c in per_rank[r])))
        assert row["calls"] == max(len(v) for v in per_rank.values())
        theirs = per_rank[straggler]
        assert (row["straggler_rank"], row["straggler_calls"]) == (straggler, sum(c["last"] for c in theirs))
        assert row["straggler_late_ms_total"] == pytest.approx(sum(c["late_ns"] for c in theirs) / 1e6)
        assert row["max_late_ms"] == pytest.approx(max(c["late_ns"] for c in mine) / 1e6)


def test_comm_of_three_ranks_with_exposed_share_and_bus_bandwidth(tmp_path):
    path = three_ranks(tmp_path)
    calls = expected_calls()
    frame = nsysan.comm(path, message_bytes=SIZES).frame
    order = []
    for rank, collective, mine in per_rank_and_collective(calls):
        order.append((rank, collective))
        spans = [(c["start_ns"], c["end_ns"]) for c in mine]
        comm_ns, hidden = union(spans), overlap(spans, [COMPUTE])
        row = frame.filter((pl.col("rank") == rank) & (pl.col("collective") == collective)).row(0, named=True)
        assert (row["calls"], row["comm_ms"], row["compute_ms"]) == (
            len(mine), pytest.approx(comm_ns / 1e6), pytest.approx((COMPUTE[1] - COMPUTE[0]) / 1e6))
        assert row["exposed_pct"] == pytest.approx(100 * (comm_ns - hidden) / comm_ns)
        for bw in ("algbw_gbps", "busbw_gbps"):
            assert row[bw] == pytest.approx(pooled_bandwidth(mine, bw)), (rank, collective, bw)
    assert frame.select("rank", "collective").rows() == order


OVERLAP_COLUMNS = ["pid", "device_id", "collective", "calls", "comm_ns", "compute_ns", "overlap_ns", "exposed_comm_ns",
                   "sized_bytes", "sized_transfer_ns", "sized_bus_bytes", "sized_bus_ns"]


def test_comm_columns_per_report_and_pooled(tmp_path):
    from nsysan.analyses.comm import comm_overlap, comm_summary

    with nsysan.open(three_ranks(tmp_path)) as report:
        per_report = comm_overlap(report, message_bytes=SIZES)
    assert per_report.columns == OVERLAP_COLUMNS  # no stage column unless asked for
    pooled = comm_summary(per_report.with_columns(report=pl.lit("r"), rank=pl.col("device_id")))
    assert pooled.columns == ["report", "rank", "device_id", "collective", "calls", "comm_ms", "compute_ms",
                              "overlap_ms", "exposed_comm_ms", "exposed_pct", "algbw_gbps", "busbw_gbps"]


def test_comm_per_stage_skips_a_rank_without_ranges(tmp_path):
    """Rank 2's process has no NVTX ranges: no stage rows for it, and no error."""
    b = ExportBuilder()
    for rank, pid in enumerate(sorted(THREE, key=THREE.get)):
        if rank < 2:
            b.range("step_1", 0, 2500, pid=pid)
        for stream, name, start, end in NCCL_KERNELS[rank]:
            b.op(b.call(101, start - 5, start - 1, pid=pid), start, end, name=name, pid=pid, device=rank, stream=stream)
    frame = nsysan.comm(b.write(tmp_path / "ranges_on_two.sqlite"), by_stage=True).frame
    assert sorted(set(frame.filter(pl.col("stage") == "step_*")["rank"])) == [0, 1]
    assert frame.filter(pl.col("rank") == 2).is_empty()


def test_comm_without_nccl_says_so_and_without_kernels_fails_naming_the_analysis(tmp_path):
    from nsysan.analyses.comm import comm_overlap

    b = ExportBuilder()
    b.range("step_1", 0, 100)
    b.op(b.call(101, 0, 5), 10, 20, name="gemm_kernel")
    path = b.write(tmp_path / "single_gpu.sqlite")
    for result in (nsysan.comm(path), nsysan.skew(path)):
        assert result.ok and result.frame.is_empty()
        assert result.notes == (f"{path}: no NCCL kernels outside warm-up: no communication to analyse (a "
                                "single-GPU run, or NCCL not traced: profile with -t cuda)",)
    with nsysan.open(path) as report, pytest.warns(nsysan.NsysanWarning):
        assert comm_overlap(report).columns == OVERLAP_COLUMNS
    b = ExportBuilder()
    b.range("step_1", 0, 100)
    bare = b.write(tmp_path / "no_kernels.sqlite")
    (failure,) = nsysan.comm(bare).failures
    assert failure.reason.endswith("(needed for communication analysis)")


def test_one_process_driving_two_gpus_has_a_row_per_gpu_in_device_order(tmp_path):
    """Single-process NCCL over two GPUs (one rank): its rows per device, device 0 first, each its own calls."""
    b = ExportBuilder()
    b.range("step_1", 0, 5000, pid=5)
    for device, starts in ((1, (100, 2000, 3000)), (0, (110, 2010))):
        for start in starts:
            b.op(b.call(101, start - 5, start - 1, pid=5), start, start + 50, name=ALLREDUCE, pid=5, device=device,
                 stream=20 + device)
    frame = nsysan.comm(b.write(tmp_path / "one_process.sqlite")).frame
    assert frame.select("rank", "device_id", "collective", "calls").rows() == [
        (0, 0, "all", 2), (0, 0, "AllReduce", 2), (0, 1, "all", 3), (0, 1, "AllReduce", 3)]
