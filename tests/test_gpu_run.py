"""The real GPU run kept as a fixture (tests/fixtures/gpu_run): the runner's sidecar and results agree with
what nsysan reads from the report. nsys stats reconciliation of the same export is in test_reconcile_nsys."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import nsysan

RUN = Path(__file__).parent / "fixtures" / "gpu_run"
EXPORT = RUN / "pipeline_gpu0_numa0_vit32x2x256.sqlite"
SIDECAR = json.loads((RUN / "pipeline_gpu0_numa0_vit32x2x256.meta.json").read_text())


def test_sidecar_records_the_configuration_and_placement():
    config = SIDECAR["config"]
    assert SIDECAR["model"] == f"vit{config['patch']}x{config['depth']}x{config['dim']}" == "vit32x2x256"
    assert SIDECAR["batch_size"] == config["batch_size"]
    cpus = SIDECAR["binding"]["cpus"]
    first, last = (int(x) for x in SIDECAR["binding"]["cpus_allowed_list"].split("-"))
    assert cpus == list(range(first, last + 1))
    assert SIDECAR["versions"]["nsys"].startswith("2025.3")
    with nsysan.open(EXPORT) as report:
        gpu = report.table("gpus")["name"].to_list()
    assert gpu == [SIDECAR["gpu_info"]["name"]]


def test_measured_batches_are_the_configured_ones():
    throughput = nsysan.throughput(EXPORT).frame
    config = SIDECAR["config"]
    expected_batches = -(-config["num_samples"] // config["batch_size"])  # num_samples rounded up to batches
    assert throughput["batches"].to_list() == [expected_batches]
    assert throughput["batch_size"].to_list() == [SIDECAR["batch_size"]]


def test_throughput_from_nvtx_matches_the_workloads_own_clock():
    # The workload timed its measured batches with the host clock; nsysan reads the NVTX batch ranges.
    throughput = nsysan.throughput(EXPORT).frame
    assert throughput["samples_per_s"][0] == pytest.approx(SIDECAR["samples_per_s"], rel=0.02)


def test_results_json_lists_the_run_as_ok():
    results = json.loads((RUN / "quick_test.results.json").read_text())
    runs = {run["name"]: run for run in results["runs"]} if isinstance(results.get("runs"), list) else results["runs"]
    assert runs["pipeline_gpu0_numa0_vit32x2x256"]["status"] == "ok"
