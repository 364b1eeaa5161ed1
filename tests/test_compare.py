"""nsysan compare: values, ratios, CIs and verdicts between groups of runs.

Noise must not be called a change (a run against itself or against halves of itself); a constructed
change (a SYNTHETIC copy of a sample export with memcpy durations x 1.5, nsysan.testing.synthetic) and the
real pinned -> pageable change must be.
"""
from __future__ import annotations

import fnmatch
import sqlite3
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import nsysan
from builders import MAIN_TID, ExportBuilder
from nsysan.analyses.compare import Settings, compare_groups, stage_observations
from nsysan.cli import app
from nsysan.engine import Runs, pooled
from nsysan.selection import Selection
from nsysan.testing.synthetic import copy_export, stretch_copies

BASE = "pipeline_gpu0_numa0_vit0x0x0"
AGAIN = "pipeline_gpu0_numa0_vit0x0x0_again"
STRETCHED = "pipeline_gpu0_numa1_vit0x0x0"
CHANGES = ("slower", "faster")


def _sample(name: str) -> Path:
    return next(p for p in nsysan.sample_paths() if p.name == f"{name}.sqlite")


def tagged_observations(runs: Runs, select: Selection) -> pl.DataFrame:
    """stage_observations of every report, tagged with ``report`` and run metadata."""
    result = pooled(runs, partial(stage_observations, select=select), by=())
    assert result.ok, result.failures
    return result.frame


def compare_samples(samples: pl.DataFrame, *, by: list[str], baseline: dict | None = None,
                    **settings) -> pl.DataFrame:
    """compare_groups with the Settings fields as keywords."""
    return compare_groups(samples, by=by, baseline=baseline, settings=Settings(**settings))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """vit0x0x0 twice (a real copy under another name) and its SYNTHETIC stretched copy (memcpy x 1.5)."""
    out = tmp_path_factory.mktemp("compare")
    copy_export(_sample(BASE), out)
    copy_export(_sample(BASE), out, name=AGAIN)
    stretch_copies(_sample(BASE), out, factor=1.5, numa=1)
    return out


@pytest.fixture(scope="module")
def synthetic(folder) -> pl.DataFrame:
    return tagged_observations(folder, Selection())  # the default: warm-up left out, batch_* pooled


@pytest.fixture(scope="module")
def sweep() -> pl.DataFrame:
    """The five real sample exports, warm-up excluded."""
    return tagged_observations(nsysan.sample_paths(), Selection())


def _changes(result: pl.DataFrame) -> pl.DataFrame:
    return result.filter(pl.col("verdict").is_in(CHANGES))


def test_a_run_against_itself_is_no_change(synthetic):
    result = compare_samples(synthetic.filter(pl.col("report").is_in([BASE, AGAIN])), by=["report"])
    others = result.filter(pl.col("report") == AGAIN)
    assert others.height > 25
    assert set(others["verdict"]) == {"no clear change"}
    assert (others["ratio"] == 1.0).all()
    assert (others["ci_low"] <= 1.0).all() and (others["ci_high"] >= 1.0).all()
    assert set(result.filter(pl.col("report") == BASE)["verdict"]) == {"baseline"}


def _split(samples: pl.DataFrame, how: str) -> pl.DataFrame:
    """Each report's instances split in two (per stage and metric, in time order): alternate instances or
    first / second half."""
    keys = ["report", "stage", "direction", "metric"]
    ordered = samples.sort("start_ns").with_columns(i=pl.int_range(pl.len()).over(keys), n=pl.len().over(keys))
    part = pl.col("i") % 2 if how == "alternate" else (pl.col("i") >= pl.col("n") // 2).cast(pl.Int64)
    return ordered.with_columns(part=part.cast(pl.String)).drop("i", "n")


@pytest.mark.parametrize("how", ["alternate", "halves"])
def test_halves_of_one_run_are_no_change(sweep, how):
    result = compare_samples(_split(sweep, how), by=["report", "part"], baseline={"part": "0"})
    compared = result.filter(pl.col("part") == "1")
    # Per report: batch_* 6 times + throughput, preprocess 2, h2d and d2h 6 + bandwidth, forward 6.
    assert compared.height == 5 * (7 + 2 + 7 + 6 + 7)
    assert _changes(compared).is_empty(), _changes(compared)


def test_without_noise_control_halves_look_different(sweep):
    """The same halves with per-row 95 % intervals, independent instances and no minimum effect: real
    drift within a run (CPU slow-downs late in a run, bursts of slow batches) gets called a change, which
    is why compare's defaults are what they are (docs/metrics.md, "Comparisons")."""
    naive = compare_samples(_split(sweep, "halves"), by=["report", "part"], baseline={"part": "0"},
                            adjust="none", block=1, min_effect_pct=0.0)
    assert _changes(naive.filter(pl.col("part") == "1")).height >= 10


def test_the_stretched_copy_is_slower(synthetic):
    result = compare_samples(synthetic.filter(pl.col("report").is_in([BASE, STRETCHED])), by=["report"])
    stretched = result.filter(pl.col("report") == STRETCHED)

    def verdict(stage, metric, statistic="mean"):
        return stretched.filter((pl.col("stage") == stage) & (pl.col("metric") == metric)
                                & (pl.col("statistic") == statistic))["verdict"].to_list()

    for stage in ("h2d", "d2h"):
        assert verdict(stage, "gpu_busy_ms") == ["slower"]
        assert verdict(stage, "gpu_proj_ms") == ["slower"]
        assert verdict(stage, "bandwidth_gbps") == ["slower"]  # lower bandwidth is slower
    for metric in ("gpu_proj_ms", "gpu_busy_ms", "range_ms"):
        assert verdict("forward", metric) == ["no clear change"]
    assert verdict("batch_*", "throughput_per_s") == ["no clear change"]
    bw = stretched.filter((pl.col("stage") == "h2d") & (pl.col("metric") == "bandwidth_gbps"))
    assert bw["ratio"].item() == pytest.approx(1 / 1.5, rel=1e-4)
    assert bw["change_pct"].item() == pytest.approx(100 * (1 / 1.5 - 1), abs=0.01)


def test_baseline_by_key_pools_groups_and_matches_numbers_by_text(synthetic):
    result = compare_samples(synthetic, by=["numa"], baseline={"numa": "0"})
    node1 = result.filter(pl.col("numa") == 1)
    assert set(node1["baseline"]) == {"numa=0"}
    assert set(result.filter(pl.col("numa") == 0)["verdict"]) == {"baseline"}
    h2d = node1.filter((pl.col("stage") == "h2d") & (pl.col("metric") == "range_ms") & (pl.col("statistic") == "mean"))
    assert h2d["baseline_n"].item() == 60 and h2d["n"].item() == 30  # two node-0 runs pooled
    assert h2d["ratio"].item() == pytest.approx(1.0)


def test_pageable_h2d_is_slower_than_pinned(sweep):
    result = compare_samples(sweep, by=["model", "variant"], baseline={"variant": ""})
    pageable = result.filter(pl.col("variant") == "pageable")
    assert set(pageable["model"]) == {"vit32x6x512"} and set(pageable["baseline"]) == {"variant=none"}
    h2d = pageable.filter(pl.col("stage") == "h2d")
    for metric in ("range_ms", "gpu_proj_ms", "gpu_busy_ms", "bandwidth_gbps"):
        assert h2d.filter((pl.col("metric") == metric) & (pl.col("statistic") == "mean"))["verdict"].item() == "slower"
    # Models without a pageable run are their own baseline.
    assert set(result.filter(pl.col("variant").is_null())["verdict"]) == {"baseline"}


def _measured_h2d_ms(path: Path) -> list[float]:
    """h2d range durations outside warm-up, straight from the export's NVTX table."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = con.execute("SELECT start, end, text, globalTid FROM NVTX_EVENTS WHERE eventType = 59").fetchall()
    con.close()
    warm = [r for r in rows if fnmatch.fnmatchcase(r[2], "warmup_*")]
    return [(e - s) / 1e6 for s, e, name, g in rows if name == "h2d"
            and not any(w[3] == g and w[0] <= s and e <= w[1] for w in warm)]


def test_values_are_the_statistics_of_the_instances(sweep):
    # The values do not depend on the bootstrap.
    result = compare_samples(sweep, by=["report"], adjust="none", resamples=100)
    for name in ("pipeline_gpu0_numa0_vit32x6x512", "pipeline_gpu0_numa0_vit32x6x512_pageable"):
        h2d = np.array(_measured_h2d_ms(_sample(name)))
        rows = result.filter((pl.col("report") == name) & (pl.col("stage") == "h2d") & (pl.col("metric") == "range_ms"))
        values = dict(zip(rows["statistic"], rows["value"]))
        assert values["mean"] == pytest.approx(h2d.mean(), rel=1e-12)
        assert values["p95"] == pytest.approx(np.percentile(h2d, 95), rel=1e-12)
        assert rows["n"].to_list() == [30, 30]


def test_seeded_and_reproducible(synthetic):
    pair = synthetic.filter(pl.col("report").is_in([BASE, STRETCHED]))
    first = compare_samples(pair, by=["report"], seed=3)
    assert compare_samples(pair, by=["report"], seed=3).equals(first)
    other = compare_samples(pair, by=["report"], seed=4)
    assert not other.equals(first)
    assert other.select("ratio", "value").equals(first.select("ratio", "value"))
    # A row's interval does not depend on which other rows are computed.
    alone = compare_samples(pair.filter(pl.col("stage") == "h2d"), by=["report"], seed=3, adjust="none")
    full = compare_samples(pair, by=["report"], seed=3, adjust="none").filter(pl.col("stage") == "h2d")
    assert alone.select("ci_low", "ci_high").equals(full.select("ci_low", "ci_high"))


def test_bonferroni_interval_level_and_minimum_effect(synthetic):
    pair = synthetic.filter(pl.col("report").is_in([BASE, STRETCHED]))
    result = compare_samples(pair, by=["report"]).filter(pl.col("report") == STRETCHED)
    assert result["ci_level"].unique().to_list() == [pytest.approx(1 - 0.05 / result.height)]
    per_row = compare_samples(pair, by=["report"], adjust="none").filter(pl.col("report") == STRETCHED)
    assert set(per_row["ci_level"]) == {0.95}
    # A minimum effect above the constructed change (bandwidth -33 %) turns the verdict into no change.
    strict = compare_samples(pair, by=["report"], min_effect_pct=60.0).filter(pl.col("report") == STRETCHED)
    assert _changes(strict).is_empty()


def test_too_few_instances_and_missing_baseline(sweep, synthetic):
    pair = synthetic.filter(pl.col("report").is_in([BASE, STRETCHED]))
    few = compare_samples(pair, by=["report"], min_instances=31).filter(pl.col("report") == STRETCHED)
    assert set(few["verdict"]) == {"too few instances"} and few["ci_low"].is_null().all()
    assert few["ratio"].is_not_null().all()
    orphans = compare_samples(sweep, by=["model", "variant"], baseline={"variant": "pageable"})
    assert set(orphans.filter(pl.col("model") != "vit32x6x512")["verdict"]) == {"no baseline"}


def test_bad_baselines_are_one_line_errors(synthetic):
    with pytest.raises(nsysan.NsysanError, match="must be among the grouping keys"):
        compare_samples(synthetic, by=["report"], baseline={"numa": 0})
    with pytest.raises(nsysan.NsysanError, match="no run has numa=7; numa here: 0, 1"):
        compare_samples(synthetic, by=["numa"], baseline={"numa": 7})
    with pytest.raises(nsysan.NsysanError, match="unknown grouping key"):
        compare_samples(synthetic, by=["colour"])


def test_cli_two_paths(folder, tmp_path):
    out = tmp_path / "cmp.csv"
    paths = [str(folder / f"{BASE}.sqlite"), str(folder / f"{STRETCHED}.sqlite")]
    result = CliRunner().invoke(app, ["compare", *paths, "--exclude-within", "warmup_*", "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out)
    assert set(table["baseline"]) == {f"report={BASE}"}
    row = table.filter((pl.col("report") == STRETCHED) & (pl.col("stage") == "h2d")
                       & (pl.col("metric") == "bandwidth_gbps"))
    assert row["verdict"].item() == "slower"


def test_cli_pinned_vs_pageable_table():
    paths = [str(_sample("pipeline_gpu0_numa0_vit32x6x512")), str(_sample("pipeline_gpu0_numa0_vit32x6x512_pageable"))]
    result = CliRunner().invoke(app, ["compare", *paths, "--by", "variant", "--baseline", "variant=",
                                      "--exclude-within", "warmup_*", "--metrics", "bandwidth_gbps"])
    assert result.exit_code == 0, result.output
    assert "Ratio to baseline variant=none" in result.output
    lines = [line for line in result.output.splitlines() if "pageable" in line and "h2d" in line]
    assert len(lines) == 1 and "slower" in lines[0]


def test_cli_bad_baseline_is_a_user_error():
    result = CliRunner().invoke(app, ["compare", str(_sample(BASE)), "--baseline", "numa"])
    assert result.exit_code == 1
    assert "--baseline takes key=value pairs" in result.output


# -- hand-built exports: answers worked out by hand -------------------------------------------------------------
def _build(path: Path, *, scale: float, period: int = 1000, gpu: bool = True, batches: int = 8) -> Path:
    """``batches`` batches every ``period`` ns, each batch_i [t, t + 500 x scale] holding preprocess (CPU only)
    and h2d [t + 10, t + 10 + 100 x scale] that launches one 1024-byte copy of 100 x scale ns."""
    from builders import MAIN_TID, ExportBuilder

    b = ExportBuilder()
    for i in range(batches):
        t = i * period
        b.range(f"batch_{i}", t, t + int(500 * scale))
        b.range("preprocess", t + 1, t + 5)
        b.range("h2d", t + 10, t + 10 + int(100 * scale))
        if gpu:
            b.launch(MAIN_TID, t + 20, t + 30, t + 40, t + 40 + int(100 * scale), kind="memcpy")
    return b.write(path)


def test_hand_built_answers(tmp_path):
    from nsysan.analyses.numa import numa_penalty

    _build(tmp_path / "pipeline_gpu0_numa0_vit1x1x1.sqlite", scale=1)
    _build(tmp_path / "pipeline_gpu0_numa1_vit1x1x1.sqlite", scale=2.5, period=2000)
    samples = tagged_observations(tmp_path, Selection(exclude_within=()))
    result = compare_samples(samples, by=["numa"], baseline={"numa": 0}).filter(pl.col("numa") == 1)
    got = {(r["stage"], r["metric"], r["statistic"]): (r["ratio"], r["verdict"]) for r in result.iter_rows(named=True)}
    assert got[("batch_*", "range_ms", "mean")] == (2.5, "slower")
    assert got[("h2d", "gpu_proj_ms", "p95")] == (2.5, "slower")
    assert got[("h2d", "bandwidth_gbps", "mean")] == (pytest.approx(1 / 2.5), "slower")  # 1024 B / 250 ns vs / 100 ns
    # Throughput = batches / (last end - first start): 8 / (7 x 1000 + 500) against 8 / (7 x 2000 + 1250) ns.
    assert got[("batch_*", "throughput_per_s", "mean")] == (pytest.approx(7500 / 15250), "slower")
    assert got[("preprocess", "range_ms", "mean")] == (1.0, "no clear change")
    assert ("preprocess", "gpu_proj_ms", "mean") not in got  # no GPU work there
    penalty = numa_penalty(samples)
    h2d = penalty.filter((pl.col("stage") == "h2d") & (pl.col("metric") == "gpu_busy_ms")
                         & (pl.col("statistic") == "mean"))
    assert h2d["penalty_pct"].item() == pytest.approx(150.0)
    assert h2d["local_basis"].item().startswith("assumed: lowest")


def test_reports_without_gpu_work(tmp_path):
    _build(tmp_path / "a.sqlite", scale=1, gpu=False)
    _build(tmp_path / "b.sqlite", scale=1, gpu=False)
    result = compare_samples(tagged_observations(tmp_path, Selection(exclude_within=())), by=["report"])
    assert set(result["metric"]) == {"range_ms", "throughput_per_s"}
    assert set(result.filter(pl.col("report") == "b")["verdict"]) == {"no clear change"}


def test_a_baseline_of_none_matches_only_runs_without_the_key():
    """baseline={"variant": None} (from the API; the CLI's "variant=" is the same) picks the run without a
    variant, never one that has a variant, wherever that group comes in the order of groups."""
    from nsysan.analyses.compare import _baseline_group

    groups = [("vit", "pageable"), ("vit", None), ("vit", "compiled")]
    for group in groups:
        assert _baseline_group(group, ["model", "variant"], {"variant": None}, groups) == ("vit", None)
        assert _baseline_group(group, ["model", "variant"], {"variant": "none"}, groups) == ("vit", None)
        assert _baseline_group(group, ["model", "variant"], {"variant": " NULL "}, groups) == ("vit", None)
        assert _baseline_group(group, ["model", "variant"], {"variant": ""}, groups) == ("vit", None)
    assert _baseline_group(("vit", "pageable"), ["model", "variant"], {"variant": None}, groups[:1]) is None
    # Text matches without case and surrounding blanks: "Pageable " picks the pageable run.
    assert _baseline_group(("vit", None), ["model", "variant"], {"variant": "Pageable "}, groups) == ("vit", "pageable")


def test_stage_observations_follow_the_selection_in_ranges_names_and_copies():
    """Selection.everything() keeps the 5 warm-up batches (their ranges and their copies) and the numbered batch
    names as recorded; the default leaves the warm-ups out and pools batch_<i> into batch_*."""
    path = next(p for p in nsysan.sample_paths() if p.name == "pipeline_gpu0_numa0_vit32x6x512.sqlite")
    with nsysan.open(path) as report:
        default = stage_observations(report)
        everything = stage_observations(report, select=Selection.everything())

    def count(frame: pl.DataFrame, stage: str, metric: str) -> int:
        return frame.filter((pl.col("stage") == stage) & (pl.col("metric") == metric)).height

    assert count(default, "forward", "range_ns") == 30 and count(everything, "forward", "range_ns") == 35
    assert count(default, "h2d", "bandwidth_gbps") == 30 and count(everything, "h2d", "bandwidth_gbps") == 35
    assert count(default, "batch_*", "range_ns") == 30 and count(everything, "batch_*", "range_ns") == 0
    numbered = {s for s in everything["stage"].unique().to_list() if s.startswith("batch_")}
    assert len(numbered) == 30


def test_copy_rates_of_a_stage_leave_out_zero_length_copies_and_copies_outside_it(tmp_path):
    b = ExportBuilder()
    b.range("h2d", 0, 1000)
    for call, (start, end), nbytes in (((10, 20), (100, 100), 100), ((30, 40), (200, 201), 7),
                                       ((50, 60), (300, 310), 50), ((2000, 2010), (2100, 2105), 9)):
        b.op(b.call(MAIN_TID, *call, api="cudaMemcpyAsync"), start, end, kind="memcpy", nbytes=nbytes)
    with nsysan.open(b.write(tmp_path / "copies.sqlite")) as report:
        rates = stage_observations(report, select=Selection.everything()).filter(
            pl.col("metric") == "bandwidth_gbps")
    # 7 B in 1 ns and 50 B in 10 ns, weighted by their durations; not the 0 ns copy, not the one after the range.
    assert rates.select("stage", "value", "weight").sort("weight").rows() == [("h2d", 7.0, 1.0), ("h2d", 5.0, 10.0)]


def test_cycles_follow_start_order_whatever_order_the_export_lists_ranges_in(tmp_path):
    b = ExportBuilder()
    for name, start, end in (("batch_1", 1000, 1500), ("batch_0", 0, 500), ("batch_2", 2000, 2600)):
        b.range(name, start, end)
    with nsysan.open(b.write(tmp_path / "unordered.sqlite")) as report:
        cycles = stage_observations(report, select=Selection(exclude_within=())).filter(pl.col("metric") == "cycle_ns")
    # Next start - own start; the last batch its own length.
    assert cycles.sort("start_ns").select("stage", "value").rows() == [("batch_*", 1000.0), ("batch_*", 1000.0),
                                                                       ("batch_*", 600.0)]


def test_baseline_labels_name_every_baseline_key_and_confidence_lies_strictly_between_0_and_1():
    rows = [(f"{model}_{numa}", model, numa, None, "s", "range_ns", 1000 * i, float(v))
            for model, numa, values in (("m1", 0, (10, 11, 12)), ("m1", 1, (20, 21, 22)), ("m3", 1, (5, 6, 7)))
            for i, v in enumerate(values)]
    samples = pl.DataFrame(rows, schema={"report": pl.String, "model": pl.String, "numa": pl.Int64,
                                         "variant": pl.String, "stage": pl.String, "metric": pl.String,
                                         "start_ns": pl.Int64, "value": pl.Float64}, orient="row").with_columns(
        direction=pl.lit(None, pl.String), weight=pl.lit(None, pl.Float64), level=pl.lit(0, pl.Int64),
        pid=pl.lit(1, pl.Int64))
    result = compare_groups(samples, by=("model", "numa", "variant"), baseline={"numa": 0, "variant": "none"},
                            settings=Settings(resamples=100, adjust="none"))
    labels = dict(result.select(pl.format("{}/{}", "model", "numa"), "baseline").unique().iter_rows())
    # m3 has no run on node 0: its label is the baseline asked for, as given.
    assert labels == {"m1/0": "numa=0, variant=none", "m1/1": "numa=0, variant=none", "m3/1": "numa=0, variant=none"}
    assert set(result.filter(pl.col("model") == "m3")["verdict"]) == {"no baseline"}
    for confidence in (0, 1, 1.5):
        with pytest.raises(nsysan.NsysanError, match="confidence must lie between 0 and 1"):
            Settings(confidence=confidence)
