"""nsysan against ground truth that the profiled programs measured or emitted themselves, not nsys.

* H100 samples: the pipeline timed every stage of every batch with CUDA events recorded on the stream
  (tests/fixtures/h100/*.truth.json; how they were made: tests/fixtures/h100/README.md). The GPU projection
  of a stage (last op end - first op start of the work its range launched) lies inside the event interval,
  which also holds the GPU's wait for the first launch (and for d2h the host's wake-up); so projected <= event
  for every measured batch, and per stage the median share projected / event and the median gap
  event - projected lie in two-sided bands set from the gaps measured on these files (README), so that a
  projection of 0, or one that swallows the wait, fails.
* CPU captures of workloads/cpu_nvtx.py (live, conftest): the workload writes how many ranges of each name
  it emitted (--expect); the loader must find exactly those in every export.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

import nsysan
from nsysan.analyses.latency import range_trace

TRUTH_DIR = Path(__file__).parent / "fixtures" / "h100"
SAMPLES = {path.name.removesuffix(".sqlite"): path for path in nsysan.sample_paths()}
TRUTHS = {path.name.removesuffix(".truth.json"): path for path in sorted(TRUTH_DIR.glob("*.truth.json"))}
STAGES = ("h2d", "forward", "d2h")
# CUDA event times are float32 milliseconds: allow their rounding, nothing more.
EVENT_TOLERANCE_NS = 1_000
# Two-sided bands, from the gaps measured on the five files (tests/fixtures/h100/README.md), with margin:
# median over the measured batches of projected / event, and of event - projected (ns).
SHARE_BAND = {"h2d": (0.5, 0.9), "forward": (0.85, 0.995), "d2h": (0.15, 0.8)}
GAP_BAND_NS = {"h2d": (20_000, 300_000), "forward": (20_000, 300_000), "d2h": (100_000, 2_000_000)}
# vit0x0x0's forward is one no-op kernel of ~2 us in an event interval of ~0.14 ms (the launch wait): its
# share says nothing; its gap band still applies.
NO_SHARE = {("pipeline_gpu0_numa0_vit0x0x0", "forward")}
BATCH_NAME = re.compile(r"^(warmup|batch)_(\d+)$")


def test_every_sample_has_a_truth_file() -> None:
    assert TRUTHS, f"no truth files under {TRUTH_DIR}"
    assert set(TRUTHS) == set(SAMPLES)


@pytest.fixture(scope="module")
def stage_times() -> dict[str, pl.DataFrame]:
    """Per sample: one row per (batch record, stage) with the truth's event time and our projection."""
    out = {}
    for name in sorted(set(TRUTHS) & set(SAMPLES)):
        truth = json.loads(TRUTHS[name].read_text())
        records = pl.DataFrame(truth["records"]).select(
            "tag", "i", *[pl.col(f"{stage}_ms").cast(pl.Float64) for stage in STAGES])
        with nsysan.open(SAMPLES[name]) as report:
            trace = range_trace(report)
        out[name] = _join_stages(records, trace, name)
    return out


def _join_stages(records: pl.DataFrame, trace: pl.DataFrame, name: str) -> pl.DataFrame:
    outer = trace.filter(pl.col("range").str.contains(BATCH_NAME.pattern)).select(
        batch_id="range_id", batch="range", batch_level="level")
    # Each batch range occurs once: a batch index names one batch.
    assert outer["batch"].is_unique().all(), f"{name}: a batch range name occurs twice"
    # The stage instance of a batch is the one whose parent is that batch's range.
    stages = (trace.filter(pl.col("range").is_in(STAGES))
              .join(outer, left_on="parent_id", right_on="batch_id", how="inner")
              .select("batch", stage="range", proj_ns="gpu_proj_ns", ops="gpu_ops", level="level",
                      batch_level="batch_level"))
    assert (stages["level"] == stages["batch_level"] + 1).all()
    assert stages.group_by("batch", "stage").len()["len"].max() == 1, f"{name}: a batch has a stage twice"
    events = records.unpivot(index=["tag", "i"], on=[f"{stage}_ms" for stage in STAGES],
                             variable_name="stage", value_name="event_ms").with_columns(
        pl.col("stage").str.strip_suffix("_ms"), batch=pl.format("{}_{}", "tag", "i"))
    return events.join(stages, on=["batch", "stage"], how="left").with_columns(
        event_ns=pl.col("event_ms") * 1e6).sort("i", "stage")


@pytest.mark.parametrize("name", sorted(TRUTHS))
def test_truth_batches_match_trace(name: str, stage_times) -> None:
    """Every batch of the truth file (warm-up and measured) has its range, and each stage of it its child range
    with GPU work; the truth's measured batches are those the trace calls batch_<i>."""
    frame = stage_times[name]
    missing = frame.filter(pl.col("proj_ns").is_null())
    assert missing.is_empty(), f"{name}: batches/stages without a projected child range:\n{missing}"
    assert (frame["ops"] > 0).all()
    truth = json.loads(TRUTHS[name].read_text())
    args = truth["args"]
    measured = frame.filter(pl.col("tag") == "batch")
    assert measured["i"].n_unique() == args["batches"]
    assert frame.filter(pl.col("tag") == "warmup")["i"].n_unique() == args["warmup"]


@pytest.mark.parametrize("name", sorted(TRUTHS))
def test_projection_within_cuda_event_time(name: str, stage_times) -> None:
    measured = stage_times[name].filter(pl.col("tag") == "batch")
    assert measured.height == 3 * measured["i"].n_unique()
    over = measured.filter(pl.col("proj_ns") > pl.col("event_ns") + EVENT_TOLERANCE_NS)
    assert over.is_empty(), (
        f"{name}: GPU projection longer than the CUDA-event time of the stage:\n"
        f"{over.select('batch', 'stage', 'proj_ns', 'event_ns')}")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", sorted(TRUTHS))
def test_projection_close_to_cuda_event_time(name: str, stage: str, stage_times) -> None:
    measured = stage_times[name].filter((pl.col("tag") == "batch") & (pl.col("stage") == stage))
    assert measured.height == json.loads(TRUTHS[name].read_text())["args"]["batches"]
    gap = (measured["event_ns"] - measured["proj_ns"]).median()
    low, high = GAP_BAND_NS[stage]
    assert low <= gap <= high, f"{name} {stage}: median event - projected = {gap / 1e3:.1f} us, not in " \
                               f"[{low / 1e3:.0f}, {high / 1e3:.0f}] us"
    if (name, stage) in NO_SHARE:
        return
    share = (measured["proj_ns"] / measured["event_ns"]).median()
    low, high = SHARE_BAND[stage]
    assert low <= share <= high, f"{name} {stage}: median projected / event = {share:.3f}, not in [{low}, {high}]"


# -- CPU workload: counts it emitted, per export ---------------------------------------------------------------

CPU_EXPORTS = [("2023", "sqlite"), ("2023", "parquetdir"), ("2022", "sqlite")]


@pytest.mark.parametrize(("release", "form"), CPU_EXPORTS, ids=[f"{r}-{f}" for r, f in CPU_EXPORTS])
def test_cpu_range_counts_match_workload(release: str, form: str, request: pytest.FixtureRequest) -> None:
    capture = request.getfixturevalue(f"cpu_capture_{release}")
    with nsysan.open(getattr(capture, form)) as report:
        trace = range_trace(report)
    counts = dict(trace.group_by("range").len().iter_rows())
    # The workload's own word, including the domain range io:write, the start/end range epoch and the
    # worker threads' ranges. (If ranges vanish here, check the pinned nvtx < 0.2.12: pyproject.toml.)
    assert counts == capture.expected
    assert {"io:write", "epoch", "worker"} <= set(capture.expected)
    styles = dict(trace.select("range", "style").unique().iter_rows())
    assert styles.pop("epoch") == "StartEnd"
    assert set(styles.values()) == {"PushPop"}
    # Worker ranges run on threads of their own, none of them the main thread's.
    main_tids = set(trace.filter(pl.col("range") == "iteration")["tid"])
    worker_tids = set(trace.filter(pl.col("range") == "worker")["tid"])
    assert len(main_tids) == 1 and len(worker_tids) >= 1 and not main_tids & worker_tids


@pytest.mark.parametrize(("release", "form"), CPU_EXPORTS, ids=[f"{r}-{f}" for r, f in CPU_EXPORTS])
def test_cpu_range_nesting_matches_workload(release: str, form: str, request: pytest.FixtureRequest) -> None:
    """The nesting the workload's code has (cpu_nvtx.py): iteration > {load, compute > inner, io:write};
    workers' ranges at the top of their threads."""
    capture = request.getfixturevalue(f"cpu_capture_{release}")
    with nsysan.open(getattr(capture, form)) as report:
        trace = range_trace(report)
    parents = dict(trace.filter(pl.col("range") != "iteration").select("range", "parent").unique().iter_rows())
    assert parents == {"load": "iteration", "compute": "iteration", "inner": "compute", "io:write": "iteration",
                       "worker": None, "epoch": None}
    levels = dict(trace.select("range", "level").unique().iter_rows())
    assert levels["inner"] == levels["compute"] + 1 == levels["iteration"] + 2
    assert levels["worker"] == 0
