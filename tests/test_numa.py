"""NUMA penalty on collections whose answer is known by construction.

Our GPU machine has a single NUMA node, so the remote-node runs here are SYNTHETIC: copies of real sample
exports whose memcpy durations (and in one case kernel durations) were stretched by a chosen factor
(nsysan.testing.synthetic), written to a temporary folder. The expected penalties are computed below
straight from the modified SQLite tables with plain Python (own range/launch matching, own union), not
through nsysan.
"""
from __future__ import annotations

import fnmatch
import json
import math
import re
import sqlite3
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import nsysan
from nsysan.analyses.compare import Settings, stage_observations
from nsysan.analyses.numa import ASSUMED_LOWEST, NumaNotComparable, numa_heatmap, numa_pairs, numa_penalty
from nsysan.cli import app
from nsysan.engine import pooled
from nsysan.selection import Selection
from nsysan.testing.synthetic import copy_export, stretch_copies

COPY_FACTOR = 1.5
KERNEL_FACTOR = 1.25
MODELS = ("vit0x0x0", "vit32x6x512")


def _sample(model: str) -> Path:
    return next(p for p in nsysan.sample_paths() if p.name == f"pipeline_gpu0_numa0_{model}.sqlite")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Node 0 (local, real) and node 1 (memcpy x 1.5) for two models; node 2 (kernels x 1.25) for vit0x0x0."""
    folder = tmp_path_factory.mktemp("numa_sweep")
    for model in MODELS:
        copy_export(_sample(model), folder, sidecar={"gpu_numa_node": 0})
        stretch_copies(_sample(model), folder, factor=COPY_FACTOR, numa=1)
    stretch_copies(_sample("vit0x0x0"), folder, factor=1.0, kernel_factor=KERNEL_FACTOR, numa=2)
    return folder


@pytest.fixture(scope="module")
def samples(sweep) -> pl.DataFrame:
    """Tagged stage observations; the default selection leaves warm-up out and pools batch_* as _independent does."""
    result = pooled(sweep, partial(stage_observations, select=Selection()), by=())
    assert result.ok, result.failures
    return result.frame


@pytest.fixture(scope="module")
def penalty(samples) -> pl.DataFrame:
    return numa_penalty(samples)


# -- independent expectation, from the SQLite tables ---------------------------------------------------------
def _independent(path: Path) -> dict[tuple[str, str | None, str], np.ndarray]:
    """Per (stage, direction, metric) the observations, computed with plain Python from the export:
    range_ns, gpu_proj_ns, gpu_busy_ns per measured instance, cycle_ns for batches, and per memcpy
    (bytes / duration, duration) of copies launched directly in a measured stage."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    strings = dict(con.execute("SELECT id, value FROM StringIds"))
    ranges = [(s, e, text if text is not None else strings[tid], g) for s, e, text, tid, g in con.execute(
        "SELECT start, end, text, textId, globalTid FROM NVTX_EVENTS WHERE eventType = 59 ORDER BY start")]
    calls = {(c, g & ~0xFFFFFF): (s, e, g) for s, e, c, g in con.execute(
        "SELECT start, end, correlationId, globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME")}
    directions = dict(con.execute("SELECT id, label FROM ENUM_CUDA_MEMCPY_OPER"))
    ops = []  # (start, end, call, bytes or None, direction or None)
    for s, e, c, p, nbytes, kind in con.execute(
            "SELECT start, end, correlationId, globalPid, bytes, copyKind FROM CUPTI_ACTIVITY_KIND_MEMCPY"):
        ops.append((s, e, calls.get((c, p)), nbytes, directions[kind]))
    for table in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMSET"):
        if con.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]:
            ops += [(s, e, calls.get((c, p)), None, None) for s, e, c, p in con.execute(
                f"SELECT start, end, correlationId, globalPid FROM {table}")]
    con.close()

    def inside(outer, s, e, g):
        return outer[3] == g and outer[0] <= s and e <= outer[1]

    warmups = [r for r in ranges if fnmatch.fnmatchcase(r[2], "warmup_*")]
    measured = [r for r in ranges if not any(inside(w, r[0], r[1], r[3]) for w in warmups)]
    out: dict[tuple, list] = defaultdict(list)
    batches = [r for r in measured if re.fullmatch(r"batch_\d+", r[2])]
    for i, r in enumerate(batches):
        out[("batch_*", None, "cycle_ns")].append((batches[i + 1][0] if i + 1 < len(batches) else r[1]) - r[0])
    for r in measured:
        stage = "batch_*" if re.fullmatch(r"batch_\d+", r[2]) else r[2]
        mine = [op for op in ops if op[2] is not None and inside(r, op[2][0], op[2][1], op[2][2])]
        out[(stage, None, "range_ns")].append(r[1] - r[0])
        if mine:
            out[(stage, None, "gpu_proj_ns")].append(max(o[1] for o in mine) - min(o[0] for o in mine))
            busy, reach = 0, None
            for s, e, *_ in sorted(mine):
                if reach is None or s >= reach:
                    busy, reach = busy + e - s, e
                elif e > reach:
                    busy, reach = busy + e - reach, e
            out[(stage, None, "gpu_busy_ns")].append(busy)
        # Bandwidth goes to the innermost stage that launched the copy: ranges with a child holding it skip.
        for s, e, call, nbytes, direction in mine:
            if nbytes is None or e <= s:
                continue
            deeper = [c for c in measured if c is not r and inside(r, c[0], c[1], c[3])
                      and inside(c, call[0], call[1], call[2])]
            if not deeper:
                out[(stage, direction, "bandwidth_gbps")].append((nbytes / (e - s), e - s))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _statistic(values: np.ndarray, metric: str, statistic: str) -> float:
    if metric == "bandwidth_gbps":
        return float((values[:, 0] * values[:, 1]).sum() / values[:, 1].sum())
    if metric == "throughput_per_s":
        return float(1e9 / values.mean())
    return float(values.mean() if statistic == "mean" else np.percentile(values, 95))


SOURCE = {"range_ms": "range_ns", "gpu_proj_ms": "gpu_proj_ns", "gpu_busy_ms": "gpu_busy_ns",
          "bandwidth_gbps": "bandwidth_gbps", "throughput_per_s": "cycle_ns"}


@pytest.fixture(scope="module")
def expected(sweep) -> dict[tuple[str, int], dict]:
    return {(model, node): _independent(sweep / f"pipeline_gpu0_numa{node}_{model}.sqlite")
            for model, node in [(m, 0) for m in MODELS] + [(m, 1) for m in MODELS] + [("vit0x0x0", 2)]}


# -- tests ----------------------------------------------------------------------------------------------------
def test_synthetic_files_are_marked_and_kept_out_of_the_sample(sweep):
    for node, model in [(1, "vit0x0x0"), (1, "vit32x6x512"), (2, "vit0x0x0")]:
        note = sweep / f"pipeline_gpu0_numa{node}_{model}.SYNTHETIC.txt"
        assert "SYNTHETIC" in note.read_text()
        assert json.loads((sweep / f"pipeline_gpu0_numa{node}_{model}.meta.json").read_text()) == {"gpu_numa_node": 0}
    assert not any("numa1" in p.name or "numa2" in p.name for p in nsysan.sample_paths())


def test_stretch_moves_only_memcpy_ends(sweep):
    """The construction itself: starts, kernels and CPU data unchanged; memcpy end = start + round(d x 1.5)."""
    local = sqlite3.connect(sweep / "pipeline_gpu0_numa0_vit0x0x0.sqlite")
    remote = sqlite3.connect(sweep / "pipeline_gpu0_numa1_vit0x0x0.sqlite")
    query = "SELECT start, end FROM CUPTI_ACTIVITY_KIND_MEMCPY ORDER BY rowid"
    for (s0, e0), (s1, e1) in zip(local.execute(query), remote.execute(query), strict=True):
        assert s1 == s0 and e1 == s0 + math.floor((e0 - s0) * COPY_FACTOR + 0.5)  # SQLite rounds halves up
    for table in ("CUPTI_ACTIVITY_KIND_KERNEL", "NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_RUNTIME"):
        same = f"SELECT * FROM {table} ORDER BY rowid"
        assert local.execute(same).fetchall() == remote.execute(same).fetchall()


def test_penalties_equal_the_values_computed_from_the_modified_tables(penalty, expected):
    checked = 0
    for row in penalty.iter_rows(named=True):
        model, remote = row["model"], row["remote_numa"]
        source = SOURCE[row["metric"]]
        key = (row["stage"], row["direction"], source)
        local_values, remote_values = expected[(model, 0)][key], expected[(model, remote)][key]
        assert row["n_local"] == len(local_values) and row["n_remote"] == len(remote_values)
        want = _statistic(remote_values, row["metric"], row["statistic"]) / _statistic(
            local_values, row["metric"], row["statistic"])
        assert row["ratio"] == pytest.approx(want, rel=1e-9, abs=1e-12), row
        assert row["penalty_pct"] == pytest.approx(100 * (want - 1), rel=1e-9, abs=1e-9)
        assert row["ci_low_pct"] <= row["penalty_pct"] <= row["ci_high_pct"], row
        checked += 1
    # 2 models x node 1 + vit0x0x0 x node 2, every stage and metric the data has.
    assert checked == penalty.height and checked > 60
    assert set(penalty.select("model", "remote_numa").unique().rows()) == {
        ("vit0x0x0", 1), ("vit32x6x512", 1), ("vit0x0x0", 2)}


def test_constructed_answers(penalty):
    def row(model, remote, stage, metric, statistic="mean", direction=None):
        found = penalty.filter((pl.col("model") == model) & (pl.col("remote_numa") == remote)
                               & (pl.col("stage") == stage) & (pl.col("metric") == metric)
                               & (pl.col("statistic") == statistic) & pl.col("direction").eq_missing(direction))
        assert found.height == 1, (model, remote, stage, metric, statistic, direction)
        return found.row(0, named=True)

    for model in MODELS:
        # Bandwidth: every copy takes 1.5x as long -> x 1/1.5 (to the rounding of ends to whole ns).
        for stage, direction in (("h2d", "Host-to-Device"), ("d2h", "Device-to-Host")):
            r = row(model, 1, stage, "bandwidth_gbps", direction=direction)
            assert r["penalty_pct"] == pytest.approx(100 * (1 / COPY_FACTOR - 1), abs=0.01)
            assert r["ci_low_pct"] <= 100 * (1 / COPY_FACTOR - 1) <= r["ci_high_pct"]
            assert r["verdict"] == "slower"
        # CPU side untouched: range times and throughput exactly unchanged, and not called a change.
        for stage in ("batch_*", "preprocess", "h2d", "forward", "d2h"):
            for statistic in ("mean", "p95"):
                r = row(model, 1, stage, "range_ms", statistic)
                assert r["penalty_pct"] == 0.0 and r["verdict"] == "no clear change"
        r = row(model, 1, "batch_*", "throughput_per_s")
        assert r["penalty_pct"] == 0.0 and r["verdict"] == "no clear change"
        # forward launches kernels (and memsets) only: its GPU time is untouched.
        for metric in ("gpu_proj_ms", "gpu_busy_ms"):
            r = row(model, 1, "forward", metric)
            assert r["penalty_pct"] == 0.0 and r["verdict"] == "no clear change"
    # vit0x0x0's h2d / d2h: one copy plus one few-µs kernel each. Stretching the copy adds at most
    # (f - 1) x copy time <= (f - 1) x the stage's GPU time, and the copy is most of it: just under f - 1 = 50 %
    # (the projection also holds a few µs of idle gap, so it grows a little less than the busy time).
    for stage in ("h2d", "d2h"):
        for metric in ("gpu_busy_ms", "gpu_proj_ms"):
            r = row("vit0x0x0", 1, stage, metric)
            assert 0.8 * 100 * (COPY_FACTOR - 1) < r["penalty_pct"] <= 100 * (COPY_FACTOR - 1) + 1e-9
            assert r["verdict"] == "slower"
    # Node 2: kernels x 1.25. vit0x0x0's forward is one kernel, so its GPU time grows by 25 %.
    r = row("vit0x0x0", 2, "forward", "gpu_busy_ms")
    assert r["penalty_pct"] == pytest.approx(100 * (KERNEL_FACTOR - 1), abs=0.1)
    assert r["verdict"] == "slower"
    r = row("vit0x0x0", 2, "h2d", "bandwidth_gbps", direction="Host-to-Device")
    assert r["penalty_pct"] == 0.0 and r["verdict"] == "no clear change"


def test_local_node_comes_from_the_sidecar(penalty, samples):
    assert set(penalty["local_basis"]) == {"gpu_numa_node from the run metadata"}
    assert set(penalty["local_numa"]) == {0}
    layout = numa_pairs(samples)
    roles = dict(zip(layout["report"], layout["role"]))
    assert roles["pipeline_gpu0_numa0_vit0x0x0"] == "local"
    assert roles["pipeline_gpu0_numa2_vit0x0x0"] == "remote"


def test_without_gpu_numa_node_the_lowest_node_is_assumed_local_and_said(samples, penalty):
    result = numa_penalty(samples.drop("gpu_numa_node"))
    assert set(result["local_basis"]) == {ASSUMED_LOWEST}
    assert set(result["local_numa"]) == {0}
    assert result.drop("local_basis").equals(penalty.drop("local_basis"))


def test_the_recorded_local_node_decides_the_direction(samples):
    """If the GPU sits on node 1 (the stretched run), node 0 is the remote one: its copies are faster."""
    flipped = samples.filter(pl.col("model") == "vit32x6x512").with_columns(gpu_numa_node=pl.lit(1))
    result = numa_penalty(flipped)
    assert set(result["local_numa"]) == {1} and set(result["remote_numa"]) == {0}
    bw = result.filter((pl.col("stage") == "h2d") & (pl.col("metric") == "bandwidth_gbps"))
    assert bw["penalty_pct"].item() == pytest.approx(100 * (COPY_FACTOR - 1), abs=0.01)
    assert bw["verdict"].item() == "faster"


def test_runs_that_disagree_on_the_local_node_are_unpaired_and_said(samples):
    """Two runs of one group recording different local nodes: no local node is chosen, and the note names both."""
    one = samples.filter(pl.col("model") == "vit32x6x512")
    disagreeing = one.with_columns(gpu_numa_node=pl.when(pl.col("numa") == 0).then(3).otherwise(1))
    layout = numa_pairs(disagreeing)
    assert set(layout["role"]) == {"unpaired"} and layout["local_numa"].is_null().all()
    assert set(layout["note"]) == {"runs of this group disagree on gpu_numa_node (1, 3)"}


def test_a_recorded_local_node_without_a_run_is_named(samples):
    one = samples.filter(pl.col("model") == "vit32x6x512").with_columns(gpu_numa_node=pl.lit(7))
    layout = numa_pairs(one)
    assert set(layout["role"]) == {"unpaired"}
    assert set(layout["note"]) == {"no run on the GPU's local NUMA node 7"}


def test_the_lowest_node_is_lowest_by_number_then_by_name(samples):
    """Nodes named in a sidecar as text: "2" comes before "10" (not as strings), and numbers before names."""
    one = samples.filter(pl.col("model") == "vit32x6x512").drop("gpu_numa_node")
    for local, remote in (("2", "10"), ("2", "x")):
        named = one.with_columns(numa=pl.when(pl.col("numa") == 0).then(pl.lit(remote)).otherwise(pl.lit(local)))
        layout = numa_pairs(named)
        assert set(layout["local_numa"]) == {local}, (local, remote)
        assert dict(zip(layout["numa"], layout["role"])) == {local: "local", remote: "remote"}


def test_an_unknown_heatmap_metric_lists_those_there_are(penalty):
    with pytest.raises(nsysan.NsysanError, match=r"choose from .*\bbandwidth_gbps/mean\b.*\brange_ms/p95\b"):
        numa_heatmap(penalty, metric="no_such_metric")


def test_single_numa_node_says_so_plainly(samples):
    with pytest.raises(NumaNotComparable, match=r"only one NUMA node: all 2 report\(s\) ran on NUMA node 0, so"):
        numa_penalty(samples.filter(pl.col("numa") == 0))
    with pytest.raises(NumaNotComparable, match=r"ran on no known NUMA node"):
        numa_penalty(samples.filter(pl.col("numa") == 0).with_columns(numa=pl.lit(None, pl.Int64)))


def test_single_node_cli_prints_the_sentence_not_a_table():
    result = CliRunner().invoke(app, ["numa", str(_sample("vit0x0x0")), "--exclude-within", "warmup_*"])
    assert result.exit_code == 0, result.output
    assert "only one NUMA node" in result.output and "NUMA node 0" in result.output
    assert "─" not in result.output and "penalty_pct" not in result.output  # no table rule, no table header


def test_runs_that_differ_in_more_than_the_node_are_not_paired(samples):
    mixed = samples.filter(((pl.col("model") == "vit0x0x0") & (pl.col("numa") == 0))
                           | ((pl.col("model") == "vit32x6x512") & (pl.col("numa") == 1)))
    with pytest.raises(NumaNotComparable, match="no pair of runs differs only in NUMA node"):
        numa_penalty(mixed)
    # A sidecar field that differs per run keeps runs apart unless ignored.
    stamped = samples.with_columns(timestamp=pl.col("report"))
    with pytest.raises(NumaNotComparable):
        numa_penalty(stamped)
    quick = Settings(adjust="none", resamples=100)  # only the pairing matters here
    assert (numa_penalty(stamped, ignore=["timestamp"], settings=quick).height
            == numa_penalty(samples, settings=quick).height)


def test_most_sensitive_models_first(samples):
    """Make vit32x6x512's remote run 30 % slower on the CPU side: it must then lead the table and heatmap."""
    slower = samples.with_columns(
        value=pl.when((pl.col("model") == "vit32x6x512") & (pl.col("numa") == 1)
                      & pl.col("metric").is_in(["range_ns", "cycle_ns"]))
        .then(pl.col("value") * 1.3).otherwise(pl.col("value")))
    # The order does not depend on the intervals.
    result = numa_penalty(slower, settings=Settings(adjust="none", resamples=100))
    assert result["model"][0] == "vit32x6x512"
    assert result.filter(pl.col("model") == "vit32x6x512")["sensitivity_pct"].unique().item() == pytest.approx(30.0)
    # Rows of one group stay together: the group changes only where the next group starts.
    groups = result.select("model", "remote_numa").rows()
    changes = sum(a != b for a, b in zip(groups, groups[1:]))
    assert changes == len(set(groups)) - 1
    heat = numa_heatmap(result)
    assert heat["model"][0] == "vit32x6x512"
    assert heat.filter(pl.col("model") == "vit32x6x512")["preprocess"].item() == pytest.approx(30.0)


def test_heatmap_is_model_by_stage_and_sorted(penalty):
    heat = numa_heatmap(penalty, metric="gpu_proj_ms")
    assert heat.columns[-4:] == ["batch_*", "h2d", "forward", "d2h"]
    assert heat.select("model", "remote_numa").rows()[:2] == [("vit0x0x0", 1), ("vit32x6x512", 1)]
    for row in heat.iter_rows(named=True):
        for stage in ("batch_*", "h2d", "forward", "d2h"):
            want = penalty.filter((pl.col("model") == row["model"]) & (pl.col("remote_numa") == row["remote_numa"])
                                  & (pl.col("stage") == stage) & (pl.col("metric") == "gpu_proj_ms")
                                  & (pl.col("statistic") == "mean"))["penalty_pct"].item()
            assert row[stage] == want
    assert heat["mean_penalty_pct"].is_sorted(descending=True)
    # Bandwidth: lower is worse, so the most negative comes first.
    bw = numa_heatmap(penalty, metric="bandwidth_gbps")
    assert bw["mean_penalty_pct"].is_sorted()
    assert bw.select("model", "remote_numa").rows()[-1] == ("vit0x0x0", 2)
    with pytest.raises(nsysan.NsysanError, match="no nope/mean penalties"):
        numa_heatmap(penalty, metric="nope")


def test_cli_numa_csv_and_heatmap(sweep, tmp_path):
    runner = CliRunner()
    out = tmp_path / "numa.csv"
    pair = [str(sweep / f"pipeline_gpu0_numa{node}_vit0x0x0.sqlite") for node in (0, 1)]
    result = runner.invoke(app, ["numa", *pair, "--exclude-within", "warmup_*", "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out)
    assert {"model", "local_numa", "remote_numa", "stage", "penalty_pct", "ci_low_pct", "ci_high_pct",
            "verdict"} <= set(table.columns)
    heat = tmp_path / "heat.csv"
    result = runner.invoke(app, ["numa", *pair, "--exclude-within", "warmup_*", "--heatmap",
                                 "--metric", "gpu_busy_ms", "-o", str(heat)])
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(heat)
    assert frame.columns[-4:] == ["batch_*", "h2d", "forward", "d2h"] and frame["model"].to_list() == ["vit0x0x0"]
    assert frame["h2d"].item() == pytest.approx(table.filter(
        (pl.col("stage") == "h2d") & (pl.col("metric") == "gpu_busy_ms") & (pl.col("statistic") == "mean")
    )["penalty_pct"].item())
    shown = runner.invoke(app, ["numa", *pair, "--exclude-within", "warmup_*", "--metrics", "bandwidth_gbps"])
    assert shown.exit_code == 0 and "bandwidth_gbps" in shown.output and "range_ms" not in shown.output


# -- the penalty's frame, its keys and its messages ----------------------------------------------------------------
PENALTY_COLUMNS = ["model", "local_numa", "remote_numa", "local_basis", "stage", "direction", "metric", "statistic",
                   "n_local", "n_remote", "local_value", "remote_value", "ratio", "penalty_pct", "ci_low_pct",
                   "ci_high_pct", "ci_level", "verdict", "sensitivity_pct"]
QUICK = Settings(adjust="none", resamples=200)


def test_penalty_columns_and_each_groups_sensitivity_is_its_mean_range_penalty(samples, penalty):
    assert [c for c in penalty.columns if c not in ("gpu", "variant")] == PENALTY_COLUMNS
    # One remote instance per stage 10 times slower: its mean penalty is no longer its median's or p95's.
    first = pl.int_range(pl.len()).over("report", "stage", "metric") == 0
    skewed = samples.with_columns(value=pl.when((pl.col("numa") != 0) & (pl.col("metric") == "range_ns") & first)
                                  .then(pl.col("value") * 10).otherwise(pl.col("value")))
    penalty = numa_penalty(skewed, settings=QUICK)
    for (model, remote), rows in penalty.group_by("model", "remote_numa"):
        means = rows.filter((pl.col("metric") == "range_ms") & (pl.col("statistic") == "mean"))["penalty_pct"]
        assert rows["sensitivity_pct"].to_list() == [pytest.approx(float(np.mean(means.to_numpy())))] * rows.height


def test_other_names_for_the_node_keys_and_the_settings_given_are_used(samples):
    renamed = samples.rename({"numa": "socket", "gpu_numa_node": "gpu_socket"})
    result = numa_penalty(renamed, numa_key="socket", local_key="gpu_socket",
                          settings=Settings(confidence=0.8, adjust="none", resamples=200))
    expected = numa_penalty(samples, settings=Settings(confidence=0.8, adjust="none", resamples=200))
    assert set(result["local_basis"]) == {"gpu_socket from the run metadata"}
    assert set(result["ci_level"]) == {0.8}
    assert result.drop("local_basis").equals(expected.drop("local_basis"))


def test_why_runs_are_unpaired_is_in_the_layout_and_the_error(samples):
    nodeless = samples.with_columns(numa=pl.when(pl.col("report") == "pipeline_gpu0_numa1_vit32x6x512")
                                    .then(None).otherwise(pl.col("numa")))
    layout = numa_pairs(nodeless)
    row = layout.filter(pl.col("report") == "pipeline_gpu0_numa1_vit32x6x512").row(0, named=True)
    assert (row["role"], row["note"]) == ("unpaired", "no NUMA node in the metadata (report name or sidecar 'numa')")
    mixed = samples.filter(((pl.col("model") == "vit0x0x0") & (pl.col("numa") == 0))
                           | ((pl.col("model") == "vit32x6x512") & (pl.col("numa") == 1)))
    with pytest.raises(NumaNotComparable) as raised:
        numa_penalty(mixed, settings=QUICK)
    assert str(raised.value).endswith("(pairs must share model, gpu, variant): every run of this group is on NUMA "
                                      "node 0; no run on the GPU's local NUMA node 0")
    with pytest.raises(NumaNotComparable) as raised:
        numa_penalty(mixed.drop("gpu_numa_node"), settings=QUICK)
    assert str(raised.value).endswith(": every run of this group is on NUMA node 0; every run of this group is on "
                                      "NUMA node 1")
    with pytest.raises(nsysan.NsysanError, match="unknown key.*to ignore: no_such_key"):
        numa_penalty(samples, ignore=["no_such_key"], settings=QUICK)
