"""Contract tests over every analysis of nsysan.api: one shape (a Result), grouping keys checked before any
report is read, failures carried by the result (the input collection never changes), bad files isolated,
derived tables computed once per report, and the same answer twice."""
from __future__ import annotations

import inspect
from pathlib import Path

import polars as pl
import pytest

import nsysan
from nsysan import attribution
from nsysan.errors import NsysanError
from nsysan.load import Report
from nsysan.sql import query

SAMPLES = nsysan.sample_paths()
DDP = Path(__file__).parent / "fixtures" / "h200x2" / "ddp_resnet18_2gpu.sqlite"
#: Analyses of distributed runs: on the single-GPU samples they have nothing to say, and say so.
DISTRIBUTED = {"comm", "skew", "collective_calls"}
#: Options that make each analysis meaningful on the samples (the rest keep their defaults).
OPTIONS = {"utilization": {"window": "forward"}, "top_kernels": {"window": "forward", "top": 3}}


def call(name: str, runs, **options):
    return nsysan.ANALYSES[name](runs, **{**OPTIONS.get(name, {}), **options})


def takes_by(name: str) -> bool:
    return "by" in inspect.signature(nsysan.ANALYSES[name]).parameters


@pytest.mark.parametrize("name", sorted(DISTRIBUTED))
def test_distributed_analyses_say_when_there_is_no_communication(name):
    result = call(name, SAMPLES[:2])
    assert result.ok and result.frame.is_empty()
    assert len(result.notes) == 2 and all("no NCCL kernels" in n for n in result.notes)
    assert call(name, DDP).frame.height > 0


@pytest.mark.parametrize("name", sorted(set(nsysan.ANALYSES) - DISTRIBUTED))
def test_every_analysis_returns_a_result_and_is_deterministic(name):
    first = call(name, SAMPLES[:2])
    assert isinstance(first, nsysan.Result) and first.ok and first.analysed == 2
    if name == "numa":  # one node: no penalty, and a sentence that says so
        assert first.frame.is_empty() and "only one NUMA node" in first.notes[0]
        return
    assert first.frame.height > 0
    assert "report" in first.frame.columns
    assert set(first.frame["report"]) <= {p.stem for p in SAMPLES[:2]}
    assert call(name, SAMPLES[:2]).frame.equals(first.frame)


@pytest.mark.parametrize("name", sorted(n for n in nsysan.ANALYSES if takes_by(n)))
def test_an_unknown_key_fails_before_any_report_is_opened(name, monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(Report, "__init__", lambda self, path: opened.append(path) or (_ for _ in ()).throw(
        AssertionError("a report was opened")))
    many = [SAMPLES[0]] * 100
    with pytest.raises(NsysanError, match="unknown grouping key.*modle"):
        call(name, many, by=["modle"])
    assert opened == []


@pytest.mark.parametrize("name", sorted(nsysan.ANALYSES))
def test_failures_travel_in_the_result_and_the_collection_stays_as_it_was(name, tmp_path):
    bad = tmp_path / "broken.sqlite"
    bad.write_text("not a database")
    runs = nsysan.collect([SAMPLES[3], bad])
    before = (runs.paths, dict(runs.metadata))
    for _ in range(2):  # the second call reports the failure once again, not twice
        result = call(name, runs)
        assert [f.path for f in result.failures] == [bad] and "not an SQLite file" in result.failures[0].reason
        assert result.analysed == 1
    assert (runs.paths, dict(runs.metadata)) == before


def test_derived_tables_are_computed_once_per_report_per_call(monkeypatch):
    """compare needs the range projection and the copies' stages: both come from one read of the launches and one
    attribution pass per report."""
    queries, climbs = [], []
    frame, launch_ranges = Report.frame, attribution.launch_ranges
    monkeypatch.setattr(Report, "frame", lambda self, text, params=None: queries.append(text) or frame(self, text, params))
    monkeypatch.setattr(attribution, "launch_ranges", lambda *a: climbs.append(1) or launch_ranges(*a))
    result = nsysan.compare(SAMPLES[3:5], by=["variant"])
    assert result.ok
    assert queries.count(query("launches")) == 2 and len(climbs) == 2  # two reports, once each
    # The NVTX ranges, likewise: one read per report serves the nesting, the trace and the stages.
    assert len([text for text in queries if "range_id" in text and "FROM nvtx_ranges" in text]) == 2


def test_results_are_tidy_frames():
    frame = nsysan.latency(SAMPLES[:1]).frame
    assert isinstance(frame, pl.DataFrame)
    assert all(c.endswith(("_ns", "_ms_mean", "_ms_p50", "_ms_p95", "_ms_p99", "_ms_min", "_ms_max", "_ms_std"))
               or c in ("report", "range", "style", "instances", "gpu_instances", "gpu_ops_total")
               for c in frame.columns), frame.columns


def test_analyses_neither_read_collections_nor_print_nor_plot():
    import ast
    from pathlib import Path

    for module in sorted((Path(nsysan.__file__).parent / "analyses").glob("*.py")):
        tree = ast.parse(module.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in imported if m.startswith(("nsysan.collection", "nsysan.engine", "nsysan.api",
                                                          "matplotlib", "seaborn", "nsysan.cli", "typer", "rich"))}, module
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert "print" not in calls, module
