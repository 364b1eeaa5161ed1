"""nsysan bandwidth: hand-built copies worked out by hand, live reconciliation with ``nsys stats``, and the
pinned vs pageable sample pair checked against the workload's own truth files.

Expected values come from: the hand computations written next to each case, ``nsys stats -r
cuda_gpu_mem_size_sum,cuda_gpu_mem_time_sum`` run live on the sample exports (bytes exact with
``csv:mem=B``), and tests/fixtures/h100/*.truth.json (bytes moved per batch, batch counts).
"""
from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import nsysan
from builders import MAIN_TID, ExportBuilder
from support import nsys_stats
from nsysan.analyses.bandwidth import bandwidth_summary, copy_size_histogram, copy_trace, size_bucket
from nsysan.cli import app
from nsysan.quality import MAX_BYTES
from nsysan.selection import Selection

FIXTURES = Path(__file__).parent / "fixtures" / "h100"
SAMPLES = {path.name.removesuffix(".sqlite"): path for path in nsysan.sample_paths()}
PAGEABLE, PINNED, DEVICE = 0, 1, 2  # ENUM_CUDA_MEM_KIND ids the builder writes (as nsys numbers them)
HTOD, DTOH, DTOD = 1, 2, 8  # ENUM_CUDA_MEMCPY_OPER ids
#: Every copy, stage names as recorded: what nsys stats counts, and what the hand computations below assume.
EVERY_COPY = Selection.everything()


# -- helpers ------------------------------------------------------------------------------------------------------
def copy(b: ExportBuilder, call: tuple[int, int], op: tuple[int, int], nbytes: int, *, stream: int = 7,
         api: str = "cudaMemcpyAsync") -> int:
    """A copy launched by ``api`` on the main thread; pinned host -> device until :func:`retag` changes it."""
    cid = b.call(MAIN_TID, *call, api=api)
    b.op(cid, *op, kind="memcpy", nbytes=nbytes, stream=stream)
    return cid


def retag(path: Path, correlation_id: int, *, kind: int, src: int, dst: int) -> None:
    """Give one written copy another direction and memory kinds (the builder writes pinned H2D only)."""
    con = sqlite3.connect(path)
    con.execute("UPDATE CUPTI_ACTIVITY_KIND_MEMCPY SET copyKind = ?, srcKind = ?, dstKind = ? WHERE correlationId = ?",
                (kind, src, dst, correlation_id))
    con.commit()
    con.close()


def summary_of(path: Path, *, by_stage: bool = False, include_memset: bool = True,
               select: Selection = EVERY_COPY, **options) -> pl.DataFrame:
    with nsysan.open(path) as report:
        copies = copy_trace(report, by_stage=by_stage, include_memset=include_memset, select=select)
    return bandwidth_summary(copies.with_columns(report=pl.lit("r")), by_stage=by_stage, select=select, **options)


def row(frame: pl.DataFrame, **keys) -> dict:
    rows = frame.filter(pl.all_horizontal(*[pl.col(k).eq_missing(v) for k, v in keys.items()]))
    assert rows.height == 1, f"expected one row for {keys}, got {rows.height}:\n{frame}"
    return rows.row(0, named=True)


# -- hand-built cases ---------------------------------------------------------------------------------------------
def test_totals_rates_and_union_by_hand(tmp_path):
    b = ExportBuilder()
    # Three pinned H2D copies: 1000 B in 100 ns, 3000 B in 100 ns (overlapping the first by 50 ns on another
    # stream), 6000 B in 200 ns.
    copy(b, (10, 20), (100, 200), 1000, stream=7)
    copy(b, (21, 30), (150, 250), 3000, stream=8)
    copy(b, (31, 40), (400, 600), 6000, stream=7)
    path = b.write(tmp_path / "case.sqlite")
    r = row(summary_of(path), direction="Host-to-Device")
    assert (r["src_kind"], r["dst_kind"]) == ("Pinned", "Device")
    assert (r["copies"], r["bytes_total"]) == (3, 10_000)
    # Busy time as nsys counts it: the sum of durations 100 + 100 + 200 = 400 ns; 10000 B / 400 ns = 25 GB/s.
    assert r["time_total_ns"] == 400
    assert r["bandwidth_gbps"] == pytest.approx(25.0)
    # Union: [100, 250) and [400, 600) = 150 + 200 = 350 ns; 10000 / 350.
    assert r["time_union_ns"] == 350
    assert r["bandwidth_union_gbps"] == pytest.approx(10_000 / 350)
    # Per-copy rates 10, 30, 30 GB/s: p50 30, p95 30, min 10, max 30.
    assert (r["copy_gbps_min"], r["copy_gbps_p50"], r["copy_gbps_p95"], r["copy_gbps_max"]) == pytest.approx(
        (10.0, 30.0, 30.0, 30.0))
    assert (r["bytes_min"], r["bytes_max"]) == (1000, 6000)
    # Pinned: no pageable flag; every copy is under 64 KiB, so they are flagged as tiny.
    assert r["pageable_async_copies"] == 0
    assert r["flags"] == "tiny copies: 100% of copies < 65536 B carry 100.0% of bytes: batch them"


def test_directions_and_kinds_come_from_the_export_enums(tmp_path):
    b = ExportBuilder()
    h2d = copy(b, (10, 20), (100, 200), 4096)
    d2h = copy(b, (30, 40), (300, 400), 8192)
    d2d = copy(b, (50, 60), (500, 600), 2048)
    path = b.write(tmp_path / "case.sqlite")
    retag(path, h2d, kind=HTOD, src=PAGEABLE, dst=DEVICE)
    retag(path, d2h, kind=DTOH, src=DEVICE, dst=PINNED)
    retag(path, d2d, kind=DTOD, src=DEVICE, dst=DEVICE)
    # Relabel the ENUM so that labels can only come from the file, not from a table inside nsysan.
    con = sqlite3.connect(path)
    con.execute("UPDATE ENUM_CUDA_MEM_KIND SET label = 'Pinned (file label)' WHERE id = 1")
    con.commit()
    con.close()
    summary = summary_of(path, tiny_bytes=1)
    got = {(r["direction"], r["src_kind"], r["dst_kind"]): r["bytes_total"] for r in summary.iter_rows(named=True)}
    assert got == {("Host-to-Device", "Pageable", "Device"): 4096,
                   ("Device-to-Host", "Device", "Pinned (file label)"): 8192,
                   ("Device-to-Device", "Device", "Device"): 2048}


def test_flags_pageable_async_but_not_pageable_sync(tmp_path):
    b = ExportBuilder()
    async_copy = copy(b, (10, 20), (100, 200), 1 << 20, api="cudaMemcpyAsync")
    sync_copy = copy(b, (30, 40), (300, 400), 1 << 20, api="cudaMemcpy")
    path = b.write(tmp_path / "case.sqlite")
    retag(path, async_copy, kind=HTOD, src=PAGEABLE, dst=DEVICE)
    retag(path, sync_copy, kind=DTOH, src=DEVICE, dst=PAGEABLE)
    summary = summary_of(path)
    flagged = row(summary, direction="Host-to-Device")
    assert flagged["pageable_async_copies"] == 1
    assert "pageable memory in 1 async copies" in flagged["flags"]
    plain = row(summary, direction="Device-to-Host")
    assert plain["pageable_async_copies"] == 0
    assert plain["flags"] is None


def test_flags_tiny_copies_dominating_the_count(tmp_path):
    b = ExportBuilder()
    for i in range(3):  # three 100 B copies and one 1 MiB copy: 75 % of copies tiny, 300 / 1048876 of bytes
        copy(b, (10 * i, 10 * i + 5), (1000 + 100 * i, 1000 + 100 * i + 10), 100)
    copy(b, (50, 60), (2000, 3000), 1 << 20)
    path = b.write(tmp_path / "case.sqlite")
    r = row(summary_of(path), direction="Host-to-Device")
    assert (r["tiny_copies"], r["tiny_copy_pct"]) == (3, 75.0)
    assert r["tiny_bytes_pct"] == pytest.approx(100 * 300 / (300 + (1 << 20)))
    assert r["flags"].startswith("tiny copies: 75% of copies < 65536 B")
    # Below the 50 % share nothing is flagged: with a 64 B threshold none is tiny.
    assert row(summary_of(path, tiny_bytes=64), direction="Host-to-Device")["flags"] is None


def copies_frame(*rows: tuple) -> pl.DataFrame:
    """A copy_trace-shaped frame from (report, stage, direction, src_kind, dst_kind, start_ns, duration_ns, bytes,
    is_async, pageable) rows: the summary is a pure function of it, so edge cases need no export."""
    keys = ("report", "stage", "direction", "src_kind", "dst_kind", "start_ns", "duration_ns", "bytes", "is_async",
            "pageable")
    frame = pl.DataFrame([dict(zip(keys, r)) for r in rows], schema_overrides={"is_async": pl.Boolean}, orient="row")
    return frame.with_columns(end_ns=pl.col("start_ns") + pl.col("duration_ns"))


H2D = ("Host-to-Device", "Pinned", "Device")


def test_rates_and_shares_at_their_boundaries():
    frame = copies_frame(
        # Two copies of 1 ns and 3 ns (5 B and 9 B): per-copy rates 5 and 3 GB/s, p50 between them.
        ("a", None, *H2D, 0, 1, 5, True, False), ("a", None, *H2D, 10, 3, 9, True, False),
        # One 1 B copy of 1 ns: every divisor is exactly 1.
        ("b", None, *H2D, 0, 1, 1, True, False),
        # Only zero-length copies: no time to divide by, so no rate at all.
        ("c", None, *H2D, 0, 0, 100, True, False), ("c", None, *H2D, 5, 0, 100, True, False),
        # A pageable copy whose call is unknown (no CUDA API trace): not counted as pageable async.
        ("d", None, "Device-to-Host", "Device", "Pageable", 0, 100, 1 << 20, None, True),
    )
    summary = bandwidth_summary(frame, select=EVERY_COPY)
    a, b, c, d = (row(summary, report=r) for r in "abcd")
    assert (a["copy_gbps_min"], a["copy_gbps_p50"], a["copy_gbps_max"]) == pytest.approx((3.0, 4.0, 5.0))
    assert a["copy_gbps_p95"] == pytest.approx(3 + 0.95 * 2)  # linear interpolation between the two
    assert (a["time_total_ns"], a["bandwidth_gbps"]) == (4, pytest.approx(14 / 4))
    assert (b["bandwidth_gbps"], b["bandwidth_union_gbps"], b["copy_gbps_max"]) == (1.0, 1.0, 1.0)
    assert (b["tiny_bytes_pct"], b["time_union_ns"]) == (100.0, 1)
    assert (c["time_total_ns"], c["time_union_ns"]) == (0, 0)
    assert (c["bandwidth_gbps"], c["bandwidth_union_gbps"], c["copy_gbps_p50"], c["copy_gbps_max"]) == (
        None, None, None, None)
    assert (d["pageable_async_copies"], d["flags"]) == (0, None)
    sizes = copy_size_histogram(frame, select=EVERY_COPY)
    assert row(sizes, report="b")["bandwidth_gbps"] == 1.0
    zero_length = row(sizes, report="c")
    assert (zero_length["time_total_ns"], zero_length["bandwidth_gbps"]) == (0, None)


def test_flags_join_in_one_line_and_round_the_share_half_up():
    # Two of three pageable async copies are tiny: 66.67 % of the copies, shown as 67 %.
    summary = bandwidth_summary(copies_frame(
        ("r", None, "Host-to-Device", "Pageable", "Device", 0, 10, 100, True, True),
        ("r", None, "Host-to-Device", "Pageable", "Device", 20, 10, 100, True, True),
        ("r", None, "Host-to-Device", "Pageable", "Device", 40, 10, 1 << 20, True, True),
    ), select=EVERY_COPY)
    tiny_pct = round(100 * 200 / (200 + (1 << 20)), 1)
    assert row(summary, report="r")["flags"] == (
        "pageable memory in 3 async copies (staged, not async): pin the host buffer; "
        f"tiny copies: 67% of copies < 65536 B carry {tiny_pct}% of bytes: batch them")


def test_rows_sort_by_the_keys_then_bytes_largest_first_then_the_copy_keys():
    d2h = ("Device-to-Host", "Device", "Pinned")
    rows = []
    for report in ("r2", "r1"):
        for stage in (None, "b", "a"):
            # The same bytes in both directions and from or to either host memory (the copy keys break the tie),
            # more bytes for a device-to-device copy.
            rows += [(report, stage, *d2h, 0, 10, 500, True, False), (report, stage, *H2D, 0, 10, 500, True, False),
                     (report, stage, "Device-to-Host", "Device", "Pageable", 0, 10, 500, True, True),
                     (report, stage, "Host-to-Device", "Pageable", "Device", 0, 10, 500, True, True),
                     (report, stage, "Device-to-Device", "Device", "Device", 0, 10, 900, True, False)]
    summary = bandwidth_summary(copies_frame(*rows), by=("report",), by_stage=True, select=EVERY_COPY)
    got = summary.select("report", "stage", "bytes_total", "direction", "src_kind", "dst_kind").rows()
    expected = sorted({(*r[:2], r[7], *r[2:5]) for r in rows},
                      key=lambda t: (t[0], t[1] is None, t[1] or "", -t[2], *t[3:]))
    assert got == expected


def test_a_frame_of_one_report_needs_no_report_column():
    frame = copies_frame(("r", None, *H2D, 0, 10, 1000, True, False), ("r", None, *H2D, 5, 10, 3000, True, False))
    alone = bandwidth_summary(frame.drop("report"), by=(), select=EVERY_COPY)
    assert alone.select("copies", "bytes_total", "time_total_ns", "time_union_ns").rows() == [(2, 4000, 20, 15)]


def test_memsets_are_their_own_direction_and_optional(tmp_path):
    b = ExportBuilder()
    copy(b, (10, 20), (100, 200), 1000)
    cid = b.call(MAIN_TID, 30, 40, api="cudaMemsetAsync")
    b.op(cid, 300, 310, kind="memset", nbytes=4)
    path = b.write(tmp_path / "case.sqlite")
    memset = row(summary_of(path), direction="Memset")
    assert (memset["src_kind"], memset["dst_kind"], memset["copies"], memset["bytes_total"]) == (None, "Device", 1, 4)
    assert memset["flags"] is None  # tiny memsets are normal: no flag
    assert summary_of(path, include_memset=False)["direction"].to_list() == ["Host-to-Device"]


def test_by_stage_uses_the_innermost_launching_range(tmp_path):
    b = ExportBuilder()
    b.range("batch_0", 0, 1000)
    b.range("h2d", 10, 100)
    b.range("d2h", 500, 900)
    copy(b, (20, 30), (40, 140), 1000)  # call inside h2d (and batch_0): stage h2d
    copy(b, (200, 210), (600, 700), 2000)  # call in batch_0 only (runs later, inside d2h's time): stage batch_0
    d2h = copy(b, (510, 520), (950, 1100), 3000)  # call in d2h; the copy ends after every range: stage d2h
    copy(b, (2000, 2010), (2100, 2200), 4000)  # launched outside every range: no stage
    path = b.write(tmp_path / "case.sqlite")
    retag(path, d2h, kind=DTOH, src=DEVICE, dst=PINNED)
    summary = summary_of(path, by_stage=True)
    got = {(r["stage"], r["direction"]): r["bytes_total"] for r in summary.iter_rows(named=True)}
    assert got == {("h2d", "Host-to-Device"): 1000, ("batch_0", "Host-to-Device"): 2000,
                   ("d2h", "Device-to-Host"): 3000, (None, "Host-to-Device"): 4000}
    merged = summary_of(path, by_stage=True, select=Selection(exclude_within=(), merge_numbered=True))
    assert "batch_*" in merged["stage"].to_list()


def test_size_histogram_uses_power_of_two_buckets(tmp_path):
    b = ExportBuilder()
    sizes = [0, 1, 2, 3, 4, 1023, 1024, 1025, 65536]
    for i, n in enumerate(sizes):
        copy(b, (10 * i, 10 * i + 5), (1000 + 100 * i, 1000 + 100 * i + 10), n)
    path = b.write(tmp_path / "case.sqlite")
    with nsysan.open(path) as report:
        hist = copy_size_histogram(copy_trace(report, select=EVERY_COPY), by=(), select=EVERY_COPY)
    # [0,1): 0 | [1,2): 1 | [2,4): 2, 3 | [4,8): 4 | [512,1024): 1023 | [1024,2048): 1024, 1025 | [64Ki,128Ki): 65536
    got = {(r["size_from_bytes"], r["size_to_bytes"]): (r["copies"], r["bytes_total"])
           for r in hist.iter_rows(named=True)}
    assert got == {(0, 1): (1, 0), (1, 2): (1, 1), (2, 4): (2, 5), (4, 8): (1, 4), (512, 1024): (1, 1023),
                   (1024, 2048): (2, 2049), (65536, 131072): (1, 65536)}
    assert hist.filter(pl.col("size_from_bytes") == 1024)["size_bucket"].item() == "[1 KiB, 2 KiB)"


def test_size_bucket_is_exact_up_to_the_largest_int64():
    """The lower end of the bucket is 2 ** (bit length - 1), worked out with Python's unbounded ints."""
    sizes = [0, 1, 2, 3, *(v for k in (10, 30, 50, 53, 54, 61, 62) for v in (2 ** k - 1, 2 ** k, 2 ** k + 1)),
             MAX_BYTES - 1, MAX_BYTES, 2 ** 63 - 1]
    got = pl.DataFrame({"b": sizes}, schema={"b": pl.Int64}).select(size_bucket(pl.col("b")).alias("lower"))["lower"].to_list()
    assert got == [0 if n == 0 else 1 << (n.bit_length() - 1) for n in sizes]
    assert got[-1] == 2 ** 62 and got[sizes.index(2 ** 62 - 1)] == 2 ** 61


def test_size_histogram_of_the_largest_buckets():
    copies = pl.DataFrame({"report": ["r"] * 5, "direction": ["Host-to-Device"] * 5, "src_kind": ["Pinned"] * 5,
                           "dst_kind": ["Device"] * 5, "bytes": [2 ** 62 - 1, 2 ** 62, 2 ** 63 - 1, MAX_BYTES, 1],
                           "duration_ns": [1] * 5}, schema_overrides={"bytes": pl.Int64, "duration_ns": pl.Int64})
    hist = copy_size_histogram(copies, by=("report",))
    assert hist.select("size_from_bytes", "size_to_bytes", "size_bucket", "copies").rows() == [
        (1, 2, "[1 B, 2 B)", 1), (2 ** 50, 2 ** 51, f"[{2 ** 20} GiB, {2 ** 21} GiB)", 1),
        (2 ** 61, 2 ** 62, f"[{2 ** 31} GiB, {2 ** 32} GiB)", 1), (2 ** 62, None, f"[{2 ** 32} GiB, {2 ** 33} GiB)", 2)]  # 2 ** 62 and 2 ** 63 - 1


def test_grouping_pools_reports(tmp_path):
    paths = []
    for name, nbytes in (("pipeline_gpu0_numa0_vit1x1x1", 1000), ("pipeline_gpu0_numa1_vit1x1x1", 3000)):
        b = ExportBuilder()
        copy(b, (10, 20), (100, 200), nbytes)
        paths.append(b.write(tmp_path / f"{name}.sqlite"))
    pooled = nsysan.bandwidth(paths, by=["model"], select=EVERY_COPY)
    assert pooled.ok, pooled.failures
    r = row(pooled.frame, model="vit1x1x1")
    # 4000 B over 100 + 100 ns; the union is per report (separate clocks), summed: 100 + 100.
    assert (r["copies"], r["bytes_total"], r["time_total_ns"], r["time_union_ns"]) == (2, 4000, 200, 200)
    assert r["bandwidth_gbps"] == pytest.approx(20.0)


def test_cli_formats(tmp_path):
    b = ExportBuilder()
    b.range("h2d", 0, 50)
    copy(b, (10, 20), (100, 200), 1000)
    path = b.write(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite")
    runner = CliRunner()
    csv = runner.invoke(app, ["bandwidth", "--format", "csv", str(path)])
    assert csv.exit_code == 0, csv.output
    frame = pl.read_csv(io.StringIO(csv.stdout))
    assert frame.select("direction", "bytes_total", "time_total_ns").row(0) == ("Host-to-Device", 1000, 100)
    js = runner.invoke(app, ["bandwidth", "--format", "json", str(path)])
    assert json.loads(js.stdout)[0]["bandwidth_gbps"] == pytest.approx(10.0)
    out = tmp_path / "bw.parquet"
    pq = runner.invoke(app, ["bandwidth", "--by", "model", "-o", str(out), str(path)])
    assert pq.exit_code == 0, pq.output
    assert pl.read_parquet(out)["model"].to_list() == ["vit1x1x1"]
    table = runner.invoke(app, ["bandwidth", "--by-stage", "--histogram", str(path)])
    assert table.exit_code == 0, table.output
    assert "Host-to-Device" in table.stdout and "h2d" in table.stdout
    bad = runner.invoke(app, ["bandwidth", "--by", "nope", str(path)])
    assert bad.exit_code == 1 and "unknown grouping key" in bad.output


def test_by_stage_without_nvtx_says_what_is_missing(tmp_path):
    b = ExportBuilder()
    copy(b, (10, 20), (100, 200), 1000)
    path = b.write(tmp_path / "case.sqlite")
    result = CliRunner().invoke(app, ["bandwidth", "--by-stage", str(path)])
    assert result.exit_code == 1
    assert "no NVTX ranges" in result.output and "by stage" in result.output


# -- live reconciliation with nsys stats --------------------------------------------------------------------------
def nsys_mem_stats(nsys: str, export: Path, folder: Path) -> dict[str, tuple[int, int, int]]:
    """{operation: (count, total bytes, total ns)} from nsys stats, bytes printed exactly (csv:mem=B)."""
    tables = nsys_stats(nsys, export, ("cuda_gpu_mem_size_sum", "cuda_gpu_mem_time_sum"), folder, fmt="csv:mem=B")
    size, time = tables["cuda_gpu_mem_size_sum"], tables["cuda_gpu_mem_time_sum"]
    assert "Total (B)" in size.columns, size.columns  # bytes, not rounded MB
    sizes = {r["Operation"]: (r["Count"], r["Total (B)"]) for r in size.iter_rows(named=True)}
    times = {r["Operation"]: (r["Count"], r["Total Time (ns)"]) for r in time.iter_rows(named=True)}
    assert sizes.keys() == times.keys()
    return {op: (sizes[op][0], sizes[op][1], times[op][1]) for op in sizes}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_reconciles_with_nsys_stats_per_direction(nsys, tmp_path, name):
    expected = nsys_mem_stats(nsys, SAMPLES[name], tmp_path)
    with nsysan.open(SAMPLES[name]) as report:
        copies = copy_trace(report, select=EVERY_COPY)
    summary = bandwidth_summary(copies.with_columns(report=pl.lit(name)), select=EVERY_COPY)
    per_direction = summary.group_by("direction").agg(pl.col("copies").sum(), pl.col("bytes_total").sum(),
                                                      pl.col("time_total_ns").sum())
    ours = {("[CUDA memset]" if r["direction"] == "Memset" else f"[CUDA memcpy {r['direction']}]"):
            (r["copies"], r["bytes_total"], r["time_total_ns"]) for r in per_direction.iter_rows(named=True)}
    assert ours == expected


# -- the pinned / pageable sample pair ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair() -> dict[str, pl.DataFrame]:
    names = ["pipeline_gpu0_numa0_vit32x6x512", "pipeline_gpu0_numa0_vit32x6x512_pageable"]
    # Every copy, warm-up included: the truth files record the warm-up batches' copies too.
    summary = nsysan.bandwidth([SAMPLES[n] for n in names], by_stage=True, select=EVERY_COPY)
    assert summary.ok, summary.failures
    return {n: summary.frame.filter(pl.col("report") == n) for n in names}


def truth(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.truth.json").read_text())


@pytest.mark.parametrize("name", ["pipeline_gpu0_numa0_vit32x6x512", "pipeline_gpu0_numa0_vit32x6x512_pageable"])
def test_stages_move_the_bytes_the_workload_recorded(pair, name):
    t = truth(name)
    records = t["records"]
    h2d = row(pair[name], stage="h2d", direction="Host-to-Device")
    d2h = row(pair[name], stage="d2h", direction="Device-to-Host")
    # One input copy and one output copy per batch (warm-up and measured), of the sizes the workload logged.
    assert h2d["copies"] == d2h["copies"] == len(records) == t["args"]["warmup"] + t["args"]["batches"]
    assert h2d["bytes_total"] == sum(r["in_bytes"] for r in records)
    assert d2h["bytes_total"] == sum(r["out_bytes"] for r in records)
    assert h2d["src_kind"] == ("Pageable" if t["args"]["pageable"] else "Pinned")


def test_pinned_input_is_faster_and_pageable_is_flagged(pair):
    pinned = row(pair["pipeline_gpu0_numa0_vit32x6x512"], stage="h2d", direction="Host-to-Device")
    pageable = row(pair["pipeline_gpu0_numa0_vit32x6x512_pageable"], stage="h2d", direction="Host-to-Device")
    assert pinned["flags"] is None and pinned["pageable_async_copies"] == 0
    assert pageable["pageable_async_copies"] == pageable["copies"]
    assert "pageable memory" in pageable["flags"]
    # The same bytes; pinned memory moves them markedly faster (per-copy median as well as in aggregate).
    assert pinned["bytes_total"] == pageable["bytes_total"]
    assert pinned["bandwidth_gbps"] > 2 * pageable["bandwidth_gbps"]
    assert pinned["copy_gbps_p50"] > 2 * pageable["copy_gbps_p50"]


def test_size_histogram_rates_labels_and_stages_by_hand(tmp_path):
    b = ExportBuilder()
    b.range("batch_1", 0, 100)
    b.range("batch_2", 200, 300)
    copy(b, (10, 20), (1000, 1100), 3 << 20)  # 3 MiB in 100 ns, stage batch_1
    copy(b, (210, 220), (2000, 2400), 2 << 20)  # 2 MiB in 400 ns, stage batch_2: same bucket [2 MiB, 4 MiB)
    copy(b, (500, 510), (3000, 3001), 5 << 30)  # 5 GiB in 1 ns, outside every range: [4 GiB, 8 GiB)
    path = b.write(tmp_path / "case.sqlite")
    with nsysan.open(path) as report:
        copies = copy_trace(report, by_stage=True, select=EVERY_COPY)
    hist = copy_size_histogram(copies, by=(), select=EVERY_COPY)
    got = {r["size_bucket"]: (r["copies"], r["bytes_total"], r["time_total_ns"], r["bandwidth_gbps"])
           for r in hist.iter_rows(named=True)}
    # [2 MiB, 4 MiB): 5 MiB in 500 ns = 10485.76 B/ns; [4 GiB, 8 GiB): 5 GiB in 1 ns.
    assert got == {"[2 MiB, 4 MiB)": (2, 5 << 20, 500, pytest.approx((5 << 20) / 500)),
                   "[4 GiB, 8 GiB)": (1, 5 << 30, 1, pytest.approx(5 << 30))}
    # By stage, numbered stages pooled by the default selection: batch_1 and batch_2 are one stage batch_*.
    staged = copy_size_histogram(copies, by=(), by_stage=True, select=Selection())
    assert sorted(staged.select("stage", "size_from_bytes", "copies").rows(), key=str) == sorted(
        [("batch_*", 2 << 20, 2), (None, 4 << 30, 1)], key=str)
    as_recorded = copy_size_histogram(copies, by=(), by_stage=True, select=EVERY_COPY)
    assert sorted(as_recorded["stage"].to_list(), key=str) == sorted(["batch_1", "batch_2", None], key=str)
    assert as_recorded["stage"].to_list()[-1] is None  # empty stage last


@pytest.mark.parametrize(("nbytes", "lower"), [
    (0, 0), (1, 1), (3, 2), (4096, 4096), (4095, 2048), (3 << 20, 2 << 20), (1 << 40, 1 << 40),
    # Near 2^53 and beyond, int -> float rounds up to the next power of two and log2 overshoots by one.
    ((1 << 53) - 1, 1 << 52), ((1 << 60) - 1, 1 << 59), (1 << 60, 1 << 60), ((1 << 60) + 12345, 1 << 60),
])
def test_size_bucket_is_the_largest_power_of_two_at_most_the_size(nbytes, lower):
    from nsysan.analyses.bandwidth import size_bucket
    assert pl.select(size_bucket(pl.lit(nbytes, pl.Int64))).item() == lower


@pytest.mark.parametrize(("nbytes", "label"), [(0, "0 B"), (512, "512 B"), (1024, "1 KiB"), (3 << 10, "3 KiB"),
                                               (1 << 20, "1 MiB"), (1536 << 10, "1536 KiB"), (2 << 30, "2 GiB"),
                                               (1 << 40, "1024 GiB"), (1000, "1000 B")])
def test_human_bytes_labels(nbytes, label):
    from nsysan.analyses.bandwidth import _human_bytes
    assert pl.select(_human_bytes(pl.lit(nbytes, pl.Int64))).item() == label
