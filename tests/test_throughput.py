"""nsysan throughput: measured batches and samples/s on hand-built exports, and on the sample sweep against
the workload's own truth files (tests/fixtures/h100/*.truth.json: batch size, batch counts, and the
per-batch wall time the workload measured itself).
"""
from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import nsysan
from builders import ExportBuilder
from nsysan.analyses.throughput import batch_size_of, batch_trace, throughput_summary
from nsysan.cli import app
from nsysan.sample import sample_dir
from nsysan.selection import Selection

FIXTURES = Path(__file__).parent / "fixtures" / "h100"
SAMPLES = {path.name.removesuffix(".sqlite"): path for path in nsysan.sample_paths()}


def batches_export(path: Path, durations: list[int], *, warmup: int = 1, gap: int = 10,
                   sidecar: dict | None = None) -> Path:
    """``warmup`` warm-up ranges then one batch_<i> range per duration, ``gap`` ns apart, each with a
    nested "forward" range; returns the export path (and writes the sidecar when given)."""
    b = ExportBuilder()
    t = 0
    for i, d in enumerate([100] * warmup + durations):
        b.range(f"warmup_{i}" if i < warmup else f"batch_{i}", t, t + d)
        b.range("forward", t + 1, t + d - 1)
        t += d + gap
    b.write(path)
    if sidecar is not None:
        path.with_name(path.name.removesuffix(".sqlite") + ".meta.json").write_text(json.dumps(sidecar))
    return path


def only_row(result: nsysan.Result) -> dict:
    assert result.ok, result.failures
    assert result.frame.height == 1, result.frame
    return result.frame.row(0, named=True)


def test_measured_batches_and_rates_by_hand(tmp_path):
    path = batches_export(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite", [1000, 2000, 3000, 4000],
                          sidecar={"batch_size": 8})
    r = only_row(nsysan.throughput(path))
    # Warm-up dropped; 4 batches of 8 samples.
    assert (r["runs"], r["batches"], r["batch_size"], r["samples"]) == (1, 4, 8, 32)
    assert r["batch_size_source"] == "sidecar:batch_size"
    # Window: first batch start to last batch end = 1000 + 2000 + 3000 + 4000 + 3 gaps of 10 = 10030 ns.
    assert r["window_ns"] == 10_030
    assert r["samples_per_s"] == pytest.approx(32 / 10_030e-9)
    assert r["batches_per_s"] == pytest.approx(4 / 10_030e-9)
    # Latency of 1, 2, 3, 4 µs: p50 2.5 µs, p95 3.85 µs (linear interpolation) -> in ms.
    assert r["batch_ms_p50"] == pytest.approx(0.0025)
    assert r["batch_ms_p95"] == pytest.approx(0.00385)
    assert r["note"] is None


def test_only_outer_batch_ranges_count(tmp_path):
    b = ExportBuilder()
    b.range("batch_0", 0, 100)
    b.range("batch_0_sub", 10, 20)  # matches batch_* but is nested in a batch: not a batch of its own
    b.range("batch_1", 200, 300)
    with nsysan.open(b.write(tmp_path / "case.sqlite")) as report:
        batches = batch_trace(report)
    assert batches["range"].to_list() == ["batch_0", "batch_1"]


def test_unknown_batch_size_is_said_not_guessed(tmp_path):
    path = batches_export(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite", [1000, 1000])
    result = nsysan.throughput(path)
    assert any("batch size unknown" in note for note in result.notes), result.notes
    r = only_row(result)
    assert r["batch_size"] is None and r["samples"] is None and r["samples_per_s"] is None
    assert r["batches_per_s"] == pytest.approx(2 / 2010e-9)
    assert "batch size unknown" in r["note"]
    result = CliRunner().invoke(app, ["throughput", str(path)])
    assert result.exit_code == 0, result.output
    assert "batch size unknown" in result.stderr


def test_batch_size_sources(tmp_path):
    assert batch_size_of({"batch": 16}) == (16, "sidecar:batch")
    assert batch_size_of({"batch_size": 4, "batch": 16}) == (4, "sidecar:batch_size")
    assert batch_size_of({}, "pipeline_gpu0_numa0_vit1x1x1_bs32") == (32, "name")
    assert batch_size_of({}, "pipeline_gpu0_numa0_vit1x1x1_pageable") == (None, None)
    assert batch_size_of({"batch_size": True}) == (None, None)
    named = batches_export(tmp_path / "pipeline_gpu0_numa0_vit1x1x1_bs4.sqlite", [1000])
    r = only_row(nsysan.throughput(named))
    assert (r["batch_size"], r["batch_size_source"], r["samples"]) == (4, "name", 4)
    forced = nsysan.throughput(named, batch_size=3).frame
    assert (forced["batch_size"].item(), forced["batch_size_source"].item()) == (3, "argument")
    assert forced.schema["batch_size"] == pl.Int64 and forced.schema["samples"] == pl.Int64


def test_grouping_pools_runs(tmp_path):
    a = batches_export(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite", [1000, 1000], sidecar={"batch": 2})
    b = batches_export(tmp_path / "pipeline_gpu0_numa1_vit1x1x1.sqlite", [3000], sidecar={"batch": 4})
    r = only_row(nsysan.throughput([a, b], by=["model"]))
    # Windows add up (2010 + 3000 ns, separate clocks); samples 2*2 + 4 = 8; mixed batch sizes -> null.
    assert (r["runs"], r["batches"], r["window_ns"], r["samples"], r["batch_size"]) == (2, 3, 5010, 8, None)
    assert r["samples_per_s"] == pytest.approx(8 / 5010e-9)
    assert r["batch_ms_p50"] == pytest.approx(0.001)  # pooled latencies 1, 1, 3 µs


def test_one_report_without_collection_tags(tmp_path):
    path = batches_export(tmp_path / "case.sqlite", [1000, 3000])
    with nsysan.open(path) as report:
        batches = batch_trace(report)
    r = throughput_summary(batches, by=(), batch_size=5).row(0, named=True)
    assert (r["runs"], r["batches"], r["samples"], r["window_ns"]) == (1, 2, 10, 4010)
    unknown = throughput_summary(batches, by=()).row(0, named=True)
    assert unknown["samples_per_s"] is None and "batch size unknown" in unknown["note"]


def test_custom_pattern_and_no_batches(tmp_path):
    path = batches_export(tmp_path / "case.sqlite", [1000, 2000])
    with nsysan.open(path) as report:
        steps = batch_trace(report, select=Selection.everything(batches="warmup_*"))
        assert steps["batch_ns"].to_list() == [100]
        with pytest.raises(nsysan.MissingDataError, match="no measured batches"):
            batch_trace(report, select=Selection(batches="step_*"))


def test_cli_formats(tmp_path):
    path = batches_export(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite", [1000, 3000], sidecar={"batch_size": 2})
    runner = CliRunner()
    csv = runner.invoke(app, ["throughput", "--format", "csv", str(path)])
    assert csv.exit_code == 0, csv.output
    assert pl.read_csv(io.StringIO(csv.stdout)).select("batches", "samples", "window_ns").row(0) == (2, 4, 4010)
    js = runner.invoke(app, ["throughput", "--by-model", "--format", "json", str(path)])
    assert json.loads(js.stdout)[0]["model"] == "vit1x1x1"
    out = tmp_path / "t.parquet"
    assert runner.invoke(app, ["throughput", "--by", "model", "-o", str(out), str(path)]).exit_code == 0
    assert pl.read_parquet(out)["samples"].to_list() == [4]
    assert "Throughput" in runner.invoke(app, ["throughput", str(path)]).stdout


# -- the sample sweep against the truth files ------------------------------------------------------------------
def truth(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.truth.json").read_text())


def test_sample_sidecars_state_the_batch_size():
    for name in SAMPLES:
        sidecar = json.loads((sample_dir() / f"{name}.meta.json").read_text())
        assert sidecar["batch_size"] == truth(name)["args"]["batch"]


@pytest.fixture(scope="module")
def sweep() -> dict[str, dict]:
    out = nsysan.throughput(list(SAMPLES.values()))
    assert out.ok, out.failures
    return {r["report"]: r for r in out.frame.iter_rows(named=True)}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_match_the_workloads_own_timing(sweep, name):
    t = truth(name)
    measured = [r["wall_ms"] for r in t["records"] if r["tag"] == "batch"]
    r = sweep[name]
    assert (r["batches"], r["batch_size"], r["samples"]) == (
        t["args"]["batches"], t["args"]["batch"], t["args"]["batches"] * t["args"]["batch"])
    # The workload timed each batch itself (perf_counter around the same code the NVTX range encloses):
    # within 2 % of the NVTX durations.
    assert r["batch_ms_p50"] == pytest.approx(statistics.median(measured), rel=0.02)
    assert r["batch_ms_p95"] == pytest.approx(float(np.percentile(measured, 95)), rel=0.02)
    assert r["samples_per_s"] == pytest.approx(t["args"]["batch"] * len(measured) / (sum(measured) / 1e3), rel=0.02)


def test_by_model_pools_the_pinned_and_pageable_runs():
    result = nsysan.throughput(list(SAMPLES.values()), by=["model"])
    pooled = {r["model"]: r for r in result.frame.iter_rows(named=True)}
    r = pooled["vit32x6x512"]
    assert (r["runs"], r["batches"], r["samples"]) == (2, 60, 600)


@pytest.mark.parametrize(("meta", "report", "expected"), [
    ({"batch_size": 8.0}, None, (8, "sidecar:batch_size")),
    ({"batch_size": 8.5, "batch": 2}, None, (2, "sidecar:batch")),
    ({"batch_size": "16"}, None, (16, "sidecar:batch_size")),
    ({"batch_size": "0", "batch": "x"}, None, (None, None)),
    ({"batch_size": 0, "batch": -3}, None, (None, None)),
    ({"batch_size": None, "batch": 4}, None, (4, "sidecar:batch")),
    ({"batch_size": False, "batch": True}, None, (None, None)),
    ({}, "run_batch12", (12, "name")),
    ({}, "run-BS7.final", (7, "name")),
    ({}, "run_bs0", (None, None)),
    ({}, "xbs32", (None, None)),
    ({}, "run_bs32x", (None, None)),
    ({"batch": 3}, "run_bs32", (3, "sidecar:batch")),
    ({"batch_size": 1}, None, (1, "sidecar:batch_size")),
    ({"batch_size": "1"}, None, (1, "sidecar:batch_size")),
    ({"batch_size": True, "batch": 5}, None, (5, "sidecar:batch")),
    ({}, "run_bs1", (1, "name")),
])
def test_batch_size_of_every_source(meta, report, expected):
    assert batch_size_of(meta, report) == expected


def test_summary_counts_unknown_sizes_per_run_and_joins_sources(tmp_path):
    a = batches_export(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite", [1000], sidecar={"batch": 2})
    b = batches_export(tmp_path / "pipeline_gpu0_numa1_vit1x1x1_bs4.sqlite", [1000, 1000])
    c = batches_export(tmp_path / "pipeline_gpu0_numa2_vit1x1x1.sqlite", [2000])
    r = only_row(nsysan.throughput([a, b, c], by=["model"]))
    assert (r["runs"], r["batches"], r["window_ns"]) == (3, 4, 1000 + 2010 + 2000)
    assert r["batch_size_source"] == "name,sidecar:batch"
    assert (r["samples"], r["samples_per_s"], r["batch_size"]) == (None, None, None)
    assert r["note"] == 'batch size unknown for 1 of 3 run(s): add "batch_size" to <report>.meta.json'
    assert r["batches_per_s"] == pytest.approx(4 / 5010e-9)
    known = only_row(nsysan.throughput([a, b], by=["model"]))
    assert (known["samples"], known["note"]) == (2 + 8, None)
    assert known["samples_per_s"] == pytest.approx(10 / 3010e-9)
    same = only_row(nsysan.throughput([b], by=["model"]))
    assert (same["batch_size"], same["batch_size_source"]) == (4, "name")
    per_run = nsysan.throughput([a, b, c]).frame
    assert per_run["report"].to_list() == sorted(per_run["report"].to_list())
    assert per_run.filter(pl.col("report").str.contains("numa2"))["batch_size_source"].to_list() == [None]


def test_batch_trace_columns_by_hand(tmp_path):
    from builders import MAIN_TID
    b = ExportBuilder()
    b.range("batch_0", 100, 400)
    b.launch(MAIN_TID, 110, 120, 150, 900)  # outlives the batch
    b.range("batch_1", 500, 600)  # no GPU work
    with nsysan.open(b.write(tmp_path / "t.sqlite")) as report:
        trace = batch_trace(report)
    assert trace.select("range", "start_ns", "end_ns", "batch_ns", "gpu_end_ns").rows() == [
        ("batch_0", 100, 400, 300, 900), ("batch_1", 500, 600, 100, None)]


def test_one_report_with_metadata_columns_and_no_report_column(tmp_path):
    path = batches_export(tmp_path / "case.sqlite", [1000])  # one measured batch
    with nsysan.open(path) as report:
        batches = batch_trace(report)
    tagged = batches.with_columns(batch=pl.lit(4), batch_size=pl.lit(None, pl.Int64))
    r = throughput_summary(tagged, by=()).row(0, named=True)
    assert (r["batch_size"], r["batch_size_source"], r["samples"]) == (4, "sidecar:batch", 4)
    frame = throughput_summary(tagged, by=())
    assert frame.schema["batch_size"] == pl.Int64 and frame.schema["samples"] == pl.Int64


def test_sidecar_batch_size_as_text_fails_and_a_stray_source_key_is_ignored(tmp_path):
    path = batches_export(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite", [1000, 1000],
                          sidecar={"batch_size": 16, "batch_size_source": "mine"})
    r = only_row(nsysan.throughput(path))
    assert (r["batch_size"], r["batch_size_source"], r["samples"]) == (16, "sidecar:batch_size", 32)
    # A number written as text is refused (sidecars are typed, docs/metrics.md), in one line naming the sidecar.
    text = batches_export(tmp_path / "text" / "pipeline_gpu0_numa0_vit1x1x1.sqlite", [1000, 1000],
                          sidecar={"batch_size": "16"})
    (failure,) = nsysan.throughput(text).failures
    assert "meta.json: batch_size must be a positive integer" in failure.reason and "\n" not in failure.reason


def test_several_batches_without_a_report_column(tmp_path):
    path = batches_export(tmp_path / "case.sqlite", [1000, 2000, 3000])
    with nsysan.open(path) as report:
        batches = batch_trace(report)
    sized = throughput_summary(batches.with_columns(batch_size=pl.lit(2)), by=())
    assert sized.select("batches", "batch_size", "batch_size_source", "samples").row(0) == (3, 2, "sidecar:batch_size", 6)
    unknown = throughput_summary(batches, by=())
    assert unknown["batch_size_source"].to_list() == [None]
    assert unknown.schema["batch_size_source"] == pl.String and unknown.schema["batch_size"] == pl.Int64


def test_a_window_of_zero_length_has_no_rate(tmp_path):
    """One measured batch that starts and ends at the same instant: no window to divide by, so no rate (not
    an infinite one)."""
    b = ExportBuilder()
    b.range("batch_0", 100, 100)
    path = b.write(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite")
    path.with_name(path.stem + ".meta.json").write_text(json.dumps({"batch_size": 4}))
    r = only_row(nsysan.throughput(path))
    assert (r["batches"], r["samples"], r["window_ns"]) == (1, 4, 0)
    assert r["samples_per_s"] is None and r["batches_per_s"] is None
