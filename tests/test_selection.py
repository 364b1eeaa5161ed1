"""nsysan.selection on hand-built traces: skip_first counts per (process, name, style), warm-up subtrees,
measured batches, name pooling. Expected instances are listed by hand next to each case."""
from __future__ import annotations

import polars as pl
import pytest

import nsysan
from builders import MAIN_TID, ExportBuilder
from nsysan.analyses.latency import range_trace
from nsysan.selection import Selection, measured_batches, pooled_name, select_instances


def _trace(tmp_path, build) -> pl.DataFrame:
    b = ExportBuilder()
    build(b)
    with nsysan.open(b.write(tmp_path / "sel.sqlite")) as report:
        return range_trace(report)


def _kept(trace: pl.DataFrame) -> list[tuple]:
    return sorted(trace.select("range", "style", "pid", "start_ns").rows())


def test_skip_first_counts_per_name_and_style(tmp_path):
    def build(b):
        b.range("io", 0, 10)
        b.range("io", 20, 30, style="startend")
        b.range("io", 40, 50)
        b.range("io", 60, 70, style="startend")
        b.range("io", 80, 90, style="startend")
    kept = select_instances(_trace(tmp_path, build), Selection(exclude_within=(), skip_first=1))
    # The first PushPop io (0) and the first StartEnd io (20) go; one name, two styles, two counts.
    assert _kept(kept) == [("io", "PushPop", 100, 40), ("io", "StartEnd", 100, 60), ("io", "StartEnd", 100, 80)]


def test_skip_first_counts_per_process(tmp_path):
    def build(b):
        for pid in (100, 200):
            b.range("step", pid, pid + 10, pid=pid, tid=pid + 1)
            b.range("step", pid + 20, pid + 30, pid=pid, tid=pid + 1)
    kept = select_instances(_trace(tmp_path, build), Selection(exclude_within=(), skip_first=1))
    assert _kept(kept) == [("step", "PushPop", 100, 120), ("step", "PushPop", 200, 220)]


def test_skip_first_counts_after_warmup_is_left_out(tmp_path):
    def build(b):
        b.range("warmup_0", 0, 100)
        b.range("forward", 10, 20)
        b.range("forward", 200, 210)
        b.range("forward", 300, 310)
    kept = select_instances(_trace(tmp_path, build), Selection(skip_first=1))
    # warmup_0 and its forward are gone first; then the first remaining forward (200) is skipped.
    assert _kept(kept) == [("forward", "PushPop", 100, 300)]


def test_skip_zero_and_large_skip(tmp_path):
    def build(b):
        b.range("a", 0, 10)
        b.range("a", 20, 30)
    trace = _trace(tmp_path, build)
    assert select_instances(trace, Selection(exclude_within=(), skip_first=0)).height == 2
    assert select_instances(trace, Selection(exclude_within=(), skip_first=2)).height == 0


def test_measured_batches_are_outermost_and_outside_warmup(tmp_path):
    def build(b):
        b.range("warmup_0", 0, 100)
        b.range("batch_0", 10, 90)  # inside warm-up: not measured
        b.range("batch_1", 200, 300)
        b.range("batch_1_inner", 210, 220)  # matches batch_* but nested in a batch
        b.range("batch_2", 400, 500, tid=MAIN_TID + 1)
    batches = measured_batches(_trace(tmp_path, build))
    assert batches.select("range", "start_ns").rows() == [("batch_1", 200), ("batch_2", 400)]
    everything = measured_batches(_trace(tmp_path, build), Selection.everything())
    assert everything["range"].to_list() == ["batch_0", "batch_1", "batch_2"]


@pytest.mark.parametrize(("name", "pooled"), [("batch_12", "batch_*"), ("step-7", "step-*"), ("v.3", "v.*"),
                                              ("io:write", "io:write"), ("layer3", "layer*"), ("x", "x"),
                                              ("a1b", "a1b")])
def test_pooled_names(name, pooled):
    assert pl.select(pooled_name(pl.lit(name))).item() == pooled


def test_selection_is_checked_and_described():
    with pytest.raises(nsysan.NsysanError):
        Selection(skip_first=-1)
    with pytest.raises(nsysan.NsysanError):
        Selection(skip_first=True)
    with pytest.raises(nsysan.NsysanError):
        Selection(batches="")
    assert Selection(exclude_within="warmup_*").exclude_within == ("warmup_*",)
    assert Selection(exclude_within=None).exclude_within == ()
    assert Selection().describe() == "excluding warmup_*; numbered ranges pooled"
    assert Selection(exclude_within=(), skip_first=2, merge_numbered=False).describe() == (
        "all instances; first 2 of each range skipped")
    assert Selection(exclude_within=("warmup_*", "init")).describe() == "excluding warmup_*, init; numbered ranges pooled"


def test_everything_keeps_every_instance_with_its_recorded_name():
    everything = Selection.everything()
    assert (everything.exclude_within, everything.skip_first, everything.merge_numbered, everything.batches) == (
        (), 0, False, ("batch_*", "step_*"))
    assert Selection.everything(batches="step_*").batches == ("step_*",)
    assert everything.describe() == "all instances"


def test_instances_of_several_reports_are_selected_per_report():
    """Range ids repeat across reports: a warm-up range of one report says nothing about the same id in
    another, and each report skips its own first instances."""
    def trace(report: str, names: list[str]) -> pl.DataFrame:
        return pl.DataFrame({"report": report, "range_id": list(range(len(names))), "range": names,
                             "style": "push/pop", "parent_id": [None] * len(names), "pid": 1,
                             "start_ns": [100 * i for i in range(len(names))]},
                            schema_overrides={"parent_id": pl.Int64})
    both = pl.concat([trace("a", ["warmup_0", "step", "step"]), trace("b", ["step", "step", "step"])])
    kept = select_instances(both, Selection(exclude_within=("warmup_*",)))
    assert kept.sort("report", "range_id").select("report", "range_id").rows() == [
        ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    skipped = select_instances(both, Selection(exclude_within=("warmup_*",), skip_first=1))
    assert skipped.sort("report", "range_id").select("report", "range_id").rows() == [("a", 2), ("b", 1), ("b", 2)]


def test_measured_batches_of_two_processes_come_in_start_order():
    """Range ids follow the order ranges ended in: rank 1's batch ended first but started later."""
    trace = pl.DataFrame({"range_id": [0, 1], "range": ["batch_0", "batch_0"], "style": "push/pop",
                          "parent_id": [None, None], "pid": [2, 1], "start_ns": [10, 0], "level": [0, 0]},
                         schema_overrides={"parent_id": pl.Int64})
    assert measured_batches(trace, Selection(exclude_within=())).select("pid", "start_ns").rows() == [(1, 0), (2, 10)]
