"""Each finding generator of nsysan.report.findings and nsysan.report.findings_compare on small frames whose answer
is known: the sentence holds the numbers computed from the frame (and nothing when there is nothing to say)."""
from __future__ import annotations

import polars as pl

from nsysan.report import findings as F
from nsysan.report import findings_compare as C
from nsysan.report import words as W

KEYS = ["model", "variant"]


def _latency(rows):
    return pl.DataFrame(rows, schema={"model": pl.String, "variant": pl.String, "range": pl.String,
                                      "range_ms_mean": pl.Float64, "gpu_proj_ms_mean": pl.Float64,
                                      "gpu_busy_ms_mean": pl.Float64}, orient="row")


def test_words():
    assert W.pct(78.4) == "78 %" and W.pct(3.36) == "3.4 %" and W.pct(-27.6, signed=True) == "−28 %"
    assert W.pct_range(18.2, 35.1) == "18–35 %" and W.pct_range(63.2, 63.4) == "63 %"
    assert W.num(29.58) == "29.6" and W.num(0.2661) == "0.266" and W.num(3742.3) == "3,742"
    assert W.group_name({"model": "vit32x6x512", "variant": None}, KEYS) == "vit32x6x512"
    assert W.group_name({"model": "a", "rank": 1, "device_id": 0}, ["model", "rank", "device_id"]) == "a · rank 1 · GPU 0"
    assert W.listing(["a", "b", "c"]) == "a, b and c"
    assert W.model_size("vit32x6x512") == 6 * 512 * 512 / 32 ** 2 and W.model_size("vit0x0x0") == 0
    assert W.model_size("resnet") is None


def test_largest_stage_from_a_model_up():
    # per batch of 10 ms: small models spend most of it in preprocess, big ones in forward
    rows = []
    for model, pre, fwd in (("vit0x0x0", 8, 1), ("vit32x2x128", 6, 3), ("vit32x6x512", 2, 7.8),
                            ("vit16x12x1024", 1, 8.5)):
        rows += [(model, None, "batch_*", 10.0, None, None), (model, None, "preprocess", pre, None, None),
                 (model, None, "forward", fwd, 5.0, 1.0)]
    frame = _latency(rows[::-1])  # order of the frame does not matter: model size does
    found = F.stage_share_findings(frame, KEYS, batch="batch_*", stages=["preprocess", "forward"], figure="f",
                                   table="t")
    assert found[0].text.startswith("The forward stage is 78–85 % of batch time from vit32x6x512 up")
    assert "preprocess in vit0x0x0 (80 %)" in found[0].text and "preprocess in vit32x2x128 (60 %)" in found[0].text
    assert (found[0].figure, found[0].table) == ("f", "t")
    assert found[1].text == ("The forward stage's share of batch time grows with model size: 10 % in vit0x0x0 to "
                             "85 % in vit16x12x1024.")
    shares = F.stage_shares(frame, KEYS, batch="batch_*", stages=["forward"])
    assert sorted(shares["share_pct"].round(1).to_list()) == [10.0, 30.0, 78.0, 85.0]


def test_one_stage_largest_everywhere_and_idle_forward():
    frame = _latency([("a", None, "batch_*", 10.0, 4.0, 1.0), ("a", None, "preprocess", 6.0, None, None),
                      ("a", None, "forward", 3.0, 4.0, 1.0),
                      ("b", "x", "batch_*", 20.0, 4.0, 3.0), ("b", "x", "preprocess", 15.0, None, None),
                      ("b", "x", "forward", 4.0, 4.0, 3.0)])
    text = F.stage_share_findings(frame, KEYS, batch="batch_*", stages=["preprocess", "forward"])[0].text
    assert text.startswith("The preprocess stage is the largest in every group (60 % in a to 75 % in b · x)")
    idle = F.gpu_idle_in_stage_findings(frame, KEYS, stage="forward")
    assert len(idle) == 1 and "busy only 25 % of the span" in idle[0].text and "(a)" in idle[0].text
    assert F.stage_share_findings(frame.head(0), KEYS, batch="batch_*", stages=["forward"]) == []


def test_throughput_range_and_tail():
    frame = pl.DataFrame({"model": ["a", "b"], "variant": [None, None], "batches": [30, 30],
                          "samples_per_s": [400.0, 1200.0], "batches_per_s": [40.0, 120.0],
                          "batch_ms_p50": [10.0, 4.0], "batch_ms_p95": [11.0, 8.0]})
    found = F.throughput_findings(frame, KEYS)
    assert found[0].text == "Throughput ranges from 400 samples/s (a) to 1,200 (b), 3.0× apart."
    assert found[1].text.startswith("Batch time is uneven in b: p95 8.00 ms is 2.0× the median 4.00 ms")
    unknown = frame.with_columns(samples_per_s=pl.lit(None, pl.Float64))
    assert "batches/s (batch size unknown)" in F.throughput_findings(unknown, KEYS)[0].text


def _copies(rows):
    return pl.DataFrame(rows, schema={"model": pl.String, "variant": pl.String, "stage": pl.String,
                                      "direction": pl.String, "src_kind": pl.String, "dst_kind": pl.String,
                                      "copies": pl.Int64, "bytes_total": pl.Int64, "time_total_ns": pl.Int64,
                                      "pageable_async_copies": pl.Int64, "tiny_copies": pl.Int64,
                                      "tiny_copy_pct": pl.Float64, "flags": pl.String}, orient="row")


def test_pinned_against_pageable_within_a_model():
    frame = _copies([  # 30 MB each: pinned in 1 ms (30 GB/s), pageable in 3 ms (10 GB/s); one copy outside stages
        ("m", None, "h2d", "Host-to-Device", "Pinned", "Device", 30, 30_000_000, 1_000_000, 0, 0, 0.0, None),
        ("m", "pageable", "h2d", "Host-to-Device", "Pageable", "Device", 30, 30_000_000, 3_000_000, 30, 0, 0.0, "p"),
        ("m", None, None, "Host-to-Device", "Pageable", "Device", 1, 100, 1_000_000, 1, 1, 100.0, "t"),
    ])
    found = F.pinned_vs_pageable_findings(frame, KEYS, figure="f", table="t")
    assert [f.text for f in found] == ["Pinned H2D copies reach 30.0 GB/s, 3.0× the 10.0 GB/s of pageable ones "
                                       "(copies inside pipeline stages, within m): pin the host buffers."]
    assert found[0].level == "warn"


def test_pinned_against_pageable_of_different_sizes_blames_size():
    frame = _copies([
        ("m", None, "h2d", "Host-to-Device", "Pinned", "Device", 10, 60_000_000, 1_000_000, 0, 0, 0.0, None),
        ("m", None, "fwd", "Host-to-Device", "Pageable", "Device", 100, 400_000, 1_000_000, 100, 100, 100.0, "p"),
    ])
    text = F.pinned_vs_pageable_findings(frame, KEYS)[0].text
    assert "0.400 GB/s" in text and "60.0 GB/s" in text and "mean 4.00 kB against 6.00 MB" in text


def test_copy_flags():
    frame = _copies([
        ("a", None, "d2h", "Device-to-Host", "Device", "Pageable", 30, 1, 1, 30, 0, 0.0, "pageable memory in 30"),
        ("b", None, "d2h", "Device-to-Host", "Device", "Pageable", 20, 1, 1, 20, 0, 0.0, "pageable memory in 20"),
        ("b", None, None, "Host-to-Device", "Pageable", "Device", 40, 1, 1, 4, 30, 75.0, "pageable; tiny copies: 75%"),
        ("b", None, "forward", "Memset", None, "Device", 400, 1, 1, 0, 400, 100.0, None),
    ])
    pageable, tiny = F.copy_flag_findings(frame, KEYS)
    assert pageable.text.startswith("50 D2H and 4 H2D asynchronous copies use pageable host memory (every group)")
    assert "b outside any NVTX range, 75 % of its 40 H2D copies are under 64 KiB" in tiny.text
    clean = frame.with_columns(pageable_async_copies=pl.lit(0), flags=pl.lit(None, pl.String))
    assert F.copy_flag_findings(clean, KEYS) == []


def test_launch_bound_and_utilization_range():
    frame = pl.DataFrame({"model": ["a", "b"], "variant": [None, None], "device_id": [0, 0], "window": ["forward"] * 2,
                          "utilization_pct": [20.0, 60.0], "idle_pct": [78.0, 35.0], "launch_gap_idle_pct": [70.0, 10.0],
                          "launch_bound": [True, False]})
    bound, spread = F.utilization_findings(frame, KEYS)
    assert bound.text.startswith("Launch-bound over forward in a: the GPU is idle 78 % of the window and 70 % of that")
    assert spread.text == "Kernels keep the GPU busy 20 % (a) to 60 % (b) of forward."


def test_top_kernel_only_when_dominant():
    frame = pl.DataFrame({"model": ["a", "a"], "variant": [None, None], "device_id": [0, 0], "name": ["gemm", "relu"],
                          "instances": [30, 300], "time_ns": [9, 1], "busy_share_pct": [90.0, 10.0]})
    assert F.top_kernel_findings(frame, KEYS)[0].text == "One kernel, gemm, takes 90 % of the kernel time in a (30 launches)."
    assert F.top_kernel_findings(frame.with_columns(busy_share_pct=pl.lit(10.0)), KEYS) == []
    nccl = F.top_kernel_findings(frame.with_columns(name=pl.lit("ncclDevKernel_AllReduce")), KEYS)[0].text
    assert "includes waiting for the other ranks" in nccl


def test_comparison_lists_called_changes_and_the_whole_batch():
    row = {"model": "m", "baseline": "variant=none", "statistic": "mean", "direction": None}
    frame = pl.DataFrame([
        {**row, "variant": "pageable", "stage": "h2d", "metric": "gpu_proj_ms", "change_pct": 300.0,
         "ci_low_pct": 225.0, "ci_high_pct": 420.0, "verdict": "slower"},
        {**row, "variant": "pageable", "stage": "d2h", "metric": "gpu_proj_ms", "change_pct": 1.0,
         "ci_low_pct": -3.0, "ci_high_pct": 4.0, "verdict": "no clear change"},
        {**row, "variant": "pageable", "stage": "batch_*", "metric": "range_ms", "change_pct": -28.0,
         "ci_low_pct": -45.0, "ci_high_pct": -4.5, "verdict": "no clear change"},
        {**row, "variant": None, "stage": "h2d", "metric": "gpu_proj_ms", "change_pct": 0.0,
         "ci_low_pct": 0.0, "ci_high_pct": 0.0, "verdict": "baseline"},
    ])
    (found,) = C.comparison_findings(frame, KEYS, batch="batch_*", figure="f", table="t")
    assert found.text == ("m · pageable against variant=none: h2d GPU time +300 % (CI +225 % … +420 %) (slower). "
                          "Whole batch: batch time −28 % (CI −45 % … −4.5 %): no clear change.")
    assert found.level == "warn"


def test_numa_penalty_and_no_numa():
    assert C.numa_findings(pl.DataFrame(), ["only one NUMA node: all 5 report(s) ran on NUMA node 0"])[0].text == (
        "Remote NUMA placement could not be tested: only one NUMA node: all 5 report(s) ran on NUMA node 0.")
    frame = pl.DataFrame({"model": ["a", "a", "b"], "local_numa": [0, 0, 0], "remote_numa": [2, 2, 2],
                          "stage": ["h2d", "forward", "h2d"], "direction": [None] * 3, "metric": ["gpu_proj_ms"] * 3,
                          "statistic": ["mean"] * 3, "penalty_pct": [35.0, 2.0, 12.0], "ci_low_pct": [30.0, -1.0, 8.0],
                          "ci_high_pct": [40.0, 5.0, 16.0], "verdict": ["slower", "no clear change", "slower"],
                          "sensitivity_pct": [35.0, 35.0, 12.0]})
    worst, ranked = C.numa_findings(frame)
    assert worst.text == "Remote NUMA node 2 costs a +35 % h2d GPU time against node 0 (CI +30 % … +40 %)."
    assert ranked.text == "NUMA sensitivity, most first: a (35 %) and b (12 %)."


def test_transfer_share_crossover():
    frame = pl.DataFrame({"model": ["vit32x6x512", "vit0x0x0", "vit32x2x128"], "variant": [None] * 3,
                          "transfer_ms": [0.2, 2.6, 0.3], "compute_ms": [3.4, 0.0, 2.0],
                          "transfer_share_pct": [5.6, 100.0, 13.0]})
    (found,) = F.transfer_share_findings(frame, KEYS)
    assert found.text.startswith("Compute outweighs transfers from vit32x2x128 up: transfers (h2d + d2h) are 13 %")


def test_comm_and_skew():
    comm = pl.DataFrame({"rank": [0, 1, 0], "collective": ["all", "all", "AllReduce"], "comm_ms": [87.1, 14.5, 86.0],
                         "exposed_pct": [92.0, 91.0, 92.0]})
    (found,) = C.comm_findings(comm)
    assert found.text.startswith("Communication is mostly exposed: 92 % of rank 0's 87.1 ms and 91 % of rank 1's 14.5 ms")
    assert "Rank 0 spends 6.0× the NCCL time of rank 1" in found.text
    skew = pl.DataFrame({"rank": [0, 1], "collective": ["all", "all"], "calls": [104, 104], "straggler_calls": [11, 93],
                         "arrival_late_ms_p50": [0.0, 1.47], "arrival_late_ms_p95": [0.7, 3.16],
                         "wait_ms_total": [82.4, 9.6]})
    steps = pl.DataFrame({"step": [f"step_{i}" for i in range(20)], "straggler_rank": [1] * 19 + [0]})
    (late,) = C.skew_findings(skew, steps)
    assert late.text == ("Rank 1 arrives last at 93 of 104 NCCL calls, a median 1.47 ms (p95 3.16 ms) after the first "
                         "rank; the other rank(s) wait 82.4 ms in total inside NCCL kernels for it. It is the straggler "
                         "of 19 of 20 steps.")
    assert C.skew_findings(skew.head(1)) == []


def test_runs():
    (ok,) = F.run_findings({"ok": 3})
    assert ok.text == "3 of 3 planned run(s) succeeded." and ok.level == "good"
    bad, unreadable = F.run_findings({"ok": 45, "failed": 1, "timeout": 1, "skipped": 1},
                                     failed_reasons=["r1: nsys wrote no report"], unreadable=2, analysed=43)
    assert bad.text == ("45 of 48 planned run(s) succeeded, 1 skipped, 2 did not finish (1 failed, 1 timeout): "
                        "r1: nsys wrote no report.")
    assert unreadable.text.startswith("2 export(s) could not be read and are left out; 43 analysed")


def test_batch_stages_from_the_trace():
    trace = pl.DataFrame({"range": ["step_1", "data", "forward", "NCCL:x", "backward", "step_2", "data"],
                          "parent": [None, "step_1", "step_1", "backward", "step_1", None, "step_2"],
                          "start_ns": [0, 1, 2, 5, 4, 10, 11]})
    assert F.batch_stages(trace) == ["data", "forward", "backward"]
