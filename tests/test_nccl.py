"""NCCL's NVTX payloads (``nsys export --include-json``): ranks and message sizes read from a real export and
from hand-built two-rank exports, used by ranks, comm and skew; and the exporter asking nsys for them."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import polars as pl
import pytest

import nsysan
from builders import ExportBuilder
from nsysan import nccl, ranks

REAL = Path(__file__).parent / "fixtures" / "nccl_payload" / "nccl_world1.sqlite"


def test_payloads_of_a_real_export():
    con = sqlite3.connect(f"file:{REAL}?mode=ro", uri=True)
    recorded = [json.loads(text) for (text,) in con.execute("SELECT jsonText FROM NVTX_EVENTS WHERE jsonText IS NOT NULL")]
    con.close()
    sizes = [p["Message size [bytes]"] for p in recorded if "Message size [bytes]" in p]
    assert sizes == [4194304] * 12  # six all-reduces and six broadcasts of 1 << 20 fp32 values
    with nsysan.open(REAL) as report:
        found = nccl.payloads(report)
        assert sorted(found["message_bytes"].drop_nulls().to_list()) == sorted(sizes)
        assert set(found.filter(pl.col("name") == "ncclAllReduce")["message_bytes"]) == {4194304}
        init = found.filter(pl.col("name") == "ncclCommInitRankConfig").row(0, named=True)
        assert (init["ranks"], init["rank"], init["cuda_device"]) == (1, 0, 0)
        assert ranks.processes(report).select("rank", "device_id", "rank_source").rows() == [(0, 0, "nccl")]


NCCL_DOMAIN = 7


def two_ranks(path: Path, *, sizes: dict[str, int | None], rank_of: dict[int, int] | None,
              late: int = 300, streams: tuple[int, int] = (17, 17)) -> Path:
    """Two processes (pids 200 and 300, GPUs 0 and 1) each run step_0 holding one AllReduce and one Broadcast:
    an NCCL NVTX range (with a payload when ``sizes`` gives one) around the launch of its kernel. Rank pid 300
    arrives ``late`` ns after pid 200 at each call; every call's transfer (last start -> last end) is 1000 ns.
    ``streams``: the NCCL streams of the AllReduce and of the Broadcast."""
    b = ExportBuilder()
    payloads = []
    for pid, device in ((200, 0), (300, 1)):
        tid = pid + 1
        offset = late if pid == 300 else 0
        b.domain("NCCL", NCCL_DOMAIN, pid=pid, tid=tid)
        init = b.range("ncclCommInitRankConfig", 10, 20, pid=pid, tid=tid, domain_id=NCCL_DOMAIN)
        if rank_of is not None:
            payloads.append((init, {"NCCL communicator ID": 5, "No. of ranks": 2, "Rank": rank_of[pid],
                                    "CUDA device": device}))
        b.range("step_0", 100, 10_000, pid=pid, tid=tid)
        for i, collective in enumerate(("AllReduce", "Broadcast")):
            t = 1000 + 3000 * i
            rid = b.range(f"nccl{collective}", t, t + 50, pid=pid, tid=tid, domain_id=NCCL_DOMAIN)
            if sizes.get(collective) is not None:
                payloads.append((rid, {"NCCL communicator ID": 5, "Message size [bytes]": sizes[collective]}))
            cid = b.call(tid, t + 10, t + 20, pid=pid)
            start = t + 100 + offset
            b.op(cid, start, t + 100 + late + 1000, name=f"ncclDevKernel_{collective}_Sum_f32_RING_LL", pid=pid,
                 device=device, stream=streams[i])
    b.write(path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE NVTX_EVENTS ADD COLUMN jsonText TEXT")
    for rowid, payload in payloads:
        con.execute("UPDATE NVTX_EVENTS SET jsonText = ? WHERE rowid = ?", (json.dumps(payload), rowid))
    con.commit()
    con.close()
    return path


def test_ranks_come_from_nccl_before_the_device_order(tmp_path):
    # NCCL says pid 200 is rank 1 and pid 300 rank 0: the opposite of the device order.
    path = two_ranks(tmp_path / "swapped.sqlite", sizes={}, rank_of={200: 1, 300: 0})
    with nsysan.open(path) as report:
        assert ranks.processes(report).select("pid", "rank", "rank_source").rows() == [
            (200, 1, "nccl"), (300, 0, "nccl")]
    plain = two_ranks(tmp_path / "plain.sqlite", sizes={}, rank_of=None)
    with nsysan.open(plain) as report:
        assert ranks.processes(report).select("pid", "rank", "rank_source").rows() == [
            (200, 0, "device order"), (300, 1, "device order")]


def test_sidecar_ranks_in_the_workloads_form(tmp_path):
    path = two_ranks(tmp_path / "sidecar.sqlite", sizes={}, rank_of=None)
    (tmp_path / "sidecar.meta.json").write_text(json.dumps({"ranks": [{"rank": 1, "pid": 200}, {"rank": 0, "pid": 300}]}))
    with nsysan.open(path) as report:
        assert ranks.processes(report).select("pid", "rank", "rank_source").rows() == [
            (200, 1, "sidecar"), (300, 0, "sidecar")]


def test_bus_bandwidth_uses_the_recorded_sizes_and_the_given_ones_where_none(tmp_path):
    path = two_ranks(tmp_path / "sizes.sqlite", sizes={"AllReduce": 8_000_000, "Broadcast": None}, rank_of=None)
    frame = nsysan.skew(path, message_bytes={"Broadcast": 2_000_000, "AllReduce": 1}).frame
    rows = {(r["rank"], r["collective"]): r for r in frame.iter_rows(named=True)}
    # AllReduce: NCCL recorded 8 MB (the caller's 1 B is ignored); 1000 ns from the last arrival to the end:
    # algbw 8e6 / 1000 = 8000 GB/s; busbw x 2(n-1)/n = 1 for two ranks. Broadcast: the caller's 2 MB, factor 1.
    assert rows[(0, "AllReduce")]["algbw_gbps"] == pytest.approx(8000.0)
    assert rows[(0, "AllReduce")]["busbw_gbps"] == pytest.approx(8000.0)
    assert rows[(1, "Broadcast")]["busbw_gbps"] == pytest.approx(2000.0)
    # Lateness: rank 1 (pid 300) starts 300 ns after rank 0 at both calls, and waits for nobody.
    assert rows[(1, "all")]["arrival_late_ms_p50"] == pytest.approx(300 / 1e6)
    assert (rows[(0, "all")]["wait_ms_total"], rows[(1, "all")]["wait_ms_total"]) == pytest.approx((600 / 1e6, 0.0))
    assert (rows[(0, "all")]["straggler_calls"], rows[(1, "all")]["straggler_calls"]) == (0, 2)
    unknown = nsysan.skew(path).frame.filter(pl.col("collective") == "Broadcast")
    assert unknown["busbw_gbps"].is_null().all()  # no size recorded, none given: n/a


def test_a_recorded_size_stays_with_its_call_when_calls_run_on_two_streams(tmp_path):
    """Each collective on its own stream: both are the first call of their lane, and only the AllReduce has a
    recorded size, so the Broadcast keeps the caller's."""
    path = two_ranks(tmp_path / "lanes.sqlite", sizes={"AllReduce": 8_000_000, "Broadcast": None}, rank_of=None,
                     streams=(17, 23))
    calls = nsysan.collective_calls(path, message_bytes={"Broadcast": 2_000_000}).frame
    sizes = dict(calls.select("collective", "message_bytes").unique().iter_rows())
    assert sizes == {"AllReduce": 8_000_000, "Broadcast": 2_000_000}
    assert calls.group_by("call").agg(pl.col("collective").n_unique())["collective"].to_list() == [1, 1]


def test_the_exporter_asks_nsys_for_the_payloads(tmp_path):
    """With an nsys whose export takes --include-json (2025.1+), nsysan export passes it; older ones never see it."""
    from nsysan import nsys_tool

    log = tmp_path / "args.txt"
    for version, supported in (("2025.3.1.0", True), ("2023.4.4.54", False)):
        fake = tmp_path / version / "nsys"
        fake.parent.mkdir()
        option = "\\t--include-json [true|false]\\n" if supported else ""
        fake.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "NVIDIA Nsight Systems version {version}";;
  export)
    if [ "$2" = "--help" ]; then printf '{option}\\t-t, --type=\\n\\n           Possible values are: sqlite.\\n           Export format type.\\n'; exit 0; fi
    echo "$@" >> {log}; exit 3;;
esac
""")
        fake.chmod(0o755)
        assert nsys_tool.find_nsys(fake).exports_json_payloads is supported
        report = tmp_path / version / "run.nsys-rep"
        report.write_bytes(b"NVIDIA Tegra Profiler Report " + version.replace(".", "@").encode() + b".\n")
        nsysan.export([report], nsys=str(fake))
        calls = log.read_text().splitlines()
        assert ("--include-json true" in calls[-1]) is supported, calls[-1]
