#!/usr/bin/env python3
"""Plant each kind of bug an audit of the suite planted in the core computations, one at a time, in a scratch
copy of the working tree (build/planted/), and check that the tests named for it fail.

    python scripts/planted_bugs.py            # every bug; exit 1 if any survives
    python scripts/planted_bugs.py skip_first # only bugs whose name contains the word

Needs the nsys that scripts/test installs (NSYSAN_TEST_NSYS) for the parity cases.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name: (file, original text, planted text, tests that must fail)
BUGS = {
    "pageable flag looks at the source only": (
        "nsysan/analyses/bandwidth.py",
        'pageable=(pl.col("src_kind").str.contains("(?i)pageable").fill_null(False)\n'
        '                  | pl.col("dst_kind").str.contains("(?i)pageable").fill_null(False)),',
        'pageable=pl.col("src_kind").str.contains("(?i)pageable").fill_null(False),',
        ["tests/test_values.py::test_the_pageable_sample_flags_its_async_copies_in_both_directions",
         "tests/test_values.py::test_pageable_destination_of_an_async_copy_is_flagged"]),
    "compare bandwidth in GiB/s": (
        "nsysan/analyses/compare.py",
        '(pl.col("bytes") / pl.col("duration_ns")).cast(pl.Float64).alias("value"),',
        '(pl.col("bytes") / pl.col("duration_ns") / 1.073741824).cast(pl.Float64).alias("value"),',
        ["tests/test_values.py::test_compare_values_and_baseline_values_equal_the_hand_computation"]),
    "compare gpu_proj_ms scaled by 1e9": (
        "nsysan/analyses/compare.py",
        'Metric("gpu_proj_ms", "mean", "gpu_proj_ns", "mean", 1 / NS_PER_MS),',
        'Metric("gpu_proj_ms", "mean", "gpu_proj_ns", "mean", 1 / NS_PER_S),',
        ["tests/test_values.py::test_compare_values_and_baseline_values_equal_the_hand_computation"]),
    "idle gaps with the wrong searchsorted side": (
        "nsysan/intervals.py",
        'which = np.searchsorted(window[0], bs, side="right") - 1',
        'which = np.searchsorted(window[0], bs, side="left") - 1',
        ["tests/test_values.py::test_forward_gaps_of_the_samples_are_short",
         "tests/test_values.py::test_range_window_reaches_the_end_of_its_gpu_work_and_gaps_stay_within_each_instance",
         "tests/test_values.py::test_windows_busy_time_and_gaps_equal_brute_force"]),
    "batches window ignores GPU work outliving the last batch": (
        "nsysan/analyses/utilization.py",
        'lo, hi = chosen.select(pl.col("start_ns").min(), in_flight.max().alias("end_ns")).row(0)',
        'lo, hi = chosen.select(pl.col("start_ns").min(), (pl.col("start_ns") + pl.col("range_ns")).max()).row(0)',
        ["tests/test_values.py::test_batches_window_reaches_the_end_of_gpu_work_that_outlives_the_last_batch"]),
    "numa local_value and remote_value swapped": (
        "nsysan/analyses/numa.py",
        'pl.col("baseline_value").alias("local_value"), pl.col("value").alias("remote_value"),',
        'pl.col("value").alias("local_value"), pl.col("baseline_value").alias("remote_value"),',
        ["tests/test_values.py::test_numa_local_and_remote_values_equal_the_hand_computation"]),
    "bootstrap never resamples the last instance": (
        "nsysan/bootstrap.py",
        "starts = rng.integers(0, n, size=(rows, blocks))",
        "starts = rng.integers(0, max(n - 1, 1), size=(rows, blocks))",
        ["tests/test_bootstrap.py::test_interval_equals_a_reference_implementation_with_the_same_draws",
         "tests/test_bootstrap.py::test_every_position_is_drawn_including_the_last"]),
    "a 93 % interval labelled 95 %": (
        "nsysan/bootstrap.py",
        "tail = (1 - confidence) / 2",
        "tail = (1 - (confidence - 0.02)) / 2",
        ["tests/test_bootstrap.py::test_coverage_is_95_not_93_percent",
         "tests/test_bootstrap.py::test_coverage_of_the_ratio_of_p95_on_normal_data",
         "tests/test_bootstrap.py::test_the_interval_holds_the_central_share_of_the_resampled_ratios",
         "tests/test_bootstrap.py::test_interval_equals_a_reference_implementation_with_the_same_draws"]),
    "min_instances compared with <=": (
        "nsysan/analyses/compare.py",
        "if min(len(values), len(base_values)) < settings.min_instances:",
        "if min(len(values), len(base_values)) <= settings.min_instances:",
        ["tests/test_values.py::test_min_instances_is_the_fewest_that_get_an_interval"]),
    "tiny_bytes compared with <=": (
        "nsysan/analyses/bandwidth.py",
        'tiny = pl.col("bytes") < tiny_bytes',
        'tiny = pl.col("bytes") <= tiny_bytes',
        ["tests/test_values.py::test_a_copy_of_exactly_tiny_bytes_is_not_tiny"]),
    "skip_first counted per name, not per (name, style)": (
        "nsysan/selection.py",
        'keys = [*_report_key(out), *(["pid"] if "pid" in out.columns else []), "range", "style"]',
        'keys = [*_report_key(out), *(["pid"] if "pid" in out.columns else []), "range"]',
        ["tests/test_selection.py::test_skip_first_counts_per_name_and_style"]),
    "kernel time_pct a share of all reports": (
        "nsysan/analyses/kernels.py",
        'out = out.with_columns((100 * (share.over(by) if by else share)).alias("time_pct"))',
        'out = out.with_columns((100 * share).alias("time_pct"))',
        ["tests/test_values.py::test_kernel_time_pct_is_a_share_of_each_report"]),
    # Beyond the audit's survivors: statistics that parity per statistic catches.
    "population standard deviation": (
        "nsysan/stats.py",
        'ms.std(ddof=1).alias(f"{prefix}_std"),',
        'ms.std(ddof=0).alias(f"{prefix}_std"),',
        ["tests/test_parity_nsys.py::test_projection_statistics_match_nvtx_gpu_proj_sum",
         "tests/test_parity_nsys.py::test_kernel_statistics_match_cuda_gpu_kern_sum"]),
    "median as the lower middle instance": (
        "nsysan/stats.py",
        'ms.quantile(0.5, interpolation="linear").alias(f"{prefix}_p50"),',
        'ms.quantile(0.5, interpolation="lower").alias(f"{prefix}_p50"),',
        ["tests/test_parity_nsys.py::test_projection_statistics_match_nvtx_gpu_proj_sum"]),
    "projection starting at the last op": (
        "nsysan/analyses/latency.py",
        'gpu_proj_start_ns=pl.col("op_start").min(),',
        'gpu_proj_start_ns=pl.col("op_start").max(),',
        ["tests/test_parity_nsys.py::test_every_projected_instance_matches_nvtx_gpu_proj_trace"]),
    "truth: projection of 0": (
        "nsysan/analyses/latency.py",
        'gpu_proj_ns=pl.col("op_end").max() - pl.col("op_start").min(),',
        'gpu_proj_ns=(pl.col("op_end").max() - pl.col("op_start").min()) * 0,',
        ["tests/test_truth.py::test_projection_close_to_cuda_event_time"]),
}


def main() -> int:
    chosen = {n: b for n, b in BUGS.items() if all(w in n for w in sys.argv[1:])}
    work = ROOT / "build" / "planted"
    if work.exists():
        shutil.rmtree(work)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    env = {**os.environ, "PYTHONPATH": str(work)}
    survived = []
    for name, (path, original, planted, tests) in chosen.items():
        source = (work / path).read_text()
        if source.count(original) != 1:
            print(f"?  {name}: the original text is not in {path} exactly once; update this script")
            survived.append(name)
            continue
        (work / path).write_text(source.replace(original, planted))
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                                  cwd=work, env=env, capture_output=True, text=True)
        finally:
            (work / path).write_text(source)
        killers = sorted({line.split("::")[1].split("[")[0].split(" ")[0] for line in done.stdout.splitlines()
                          if line.startswith("FAILED ")})
        killed = done.returncode == 1 and bool(killers)
        print(f"{'killed  ' if killed else 'SURVIVED'}  {name}  (failed: {', '.join(killers) or 'none'}; "
              f"named: {len(tests)})")
        if not killed:
            survived.append(name)
            print(done.stdout[-1500:])
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
