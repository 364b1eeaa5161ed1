"""nsysan report on real exports: the sample sweep, a study folder as ``nsysan run`` leaves it (with failed,
skipped and unreadable runs and a NUMA pair whose answer is known), the real study run of tests/fixtures/gpu_run,
the 2-GPU DDP capture, and an export without NVTX ranges. The page holds what was run, findings that agree
with the analyses' own numbers and point to figures and tables that exist, and a self-contained HTML file."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import nsysan
from nsysan.cli import app
from nsysan.report import Column, Figure, Finding, Page, Section, Table, build_report, render_html
from nsysan.report.study import find_studies
from nsysan.testing.synthetic import copy_export, stretch_copies

FIXTURES = Path(__file__).parent / "fixtures"
DDP = FIXTURES / "h200x2" / "ddp_resnet18_2gpu.sqlite"
SECTIONS = ["findings", "runs", "stages", "throughput", "bandwidth", "flags", "utilization", "kernels", "compare",
            "numa", "timeline", "notes"]


def sample(name: str) -> Path:
    return next(p for p in nsysan.sample_paths() if p.name == f"pipeline_gpu0_numa0_{name}.sqlite")


def check_references(page: Page) -> None:
    """Every finding points to a figure or table of the page (or to none), every figure is an image."""
    ids = {f.id for f in page.figures} | {t.id for t in page.tables}
    for finding in page.findings:
        for ref in (finding.figure, finding.table):
            assert ref is None or ref in ids, f"{finding.text!r} points to missing {ref}"
    for figure in page.figures:
        assert figure.number > 0 and figure.width_px > 0 and figure.height_px > 0
        head = figure.data[:64]
        assert head.startswith(b"\x89PNG") if figure.mime == "image/png" else b"<svg" in figure.data[:600], figure.id
    assert [t.number for t in page.tables] == list(range(1, len(page.tables) + 1))
    summary = page.section("findings")
    assert summary.findings == page.findings


def check_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    outside = re.findall(r'(?:src|href)="(?!data:|#)([^"]*)"', html)
    assert outside == [], outside
    assert "@import" not in html and "url(http" not in html


# -- the sample sweep ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_page() -> Page:
    return build_report(nsysan.sample_paths())


def test_sample_report_sections_and_references(sample_page):
    page = sample_page
    assert [s.id for s in page.sections] == SECTIONS
    assert page.title == "nsysan report: 5 exports"
    check_references(page)
    assert {f.id for f in page.figures} == {"fig-stages", "fig-bandwidth", "fig-busy", "fig-gaps", "fig-kernels",
                                            "fig-forest", "fig-timeline"}
    for t in page.tables:  # numbers have units in their headers, except counts
        for column in t.columns:
            if column.numeric and column.key.endswith(("_ms", "_pct", "_gbps", "_us", "_per_s")):
                assert column.unit, (t.id, column.key)
    # the NUMA section says why it cannot show a penalty, with the analysis's own sentence
    numa = page.section("numa")
    assert not numa.figures and numa.findings[0].text.startswith(
        "Remote NUMA placement could not be tested: only one NUMA node: all 5 report(s) ran on NUMA node 0")


def test_sample_findings_agree_with_the_analyses(sample_page):
    texts = [f.text for f in sample_page.findings]
    # pinned vs pageable H2D inside the pipeline stages: bytes / summed time of each kind, from nsysan.bandwidth
    staged = nsysan.bandwidth(nsysan.sample_paths(), by=["model", "variant"], by_stage=True).frame.filter(
        pl.col("stage").is_not_null(), pl.col("direction") == "Host-to-Device", pl.col("model") == "vit32x6x512")
    rate = {k: g["bytes_total"].sum() / g["time_total_ns"].sum() for (k,), g in staged.group_by("src_kind")}
    expected = f"Pinned H2D copies reach {rate['Pinned']:.1f} GB/s, {rate['Pinned'] / rate['Pageable']:.1f}× the"
    assert any(t.startswith(expected) for t in texts), (expected, texts)
    # the largest stage: preprocess's share of the batch mean, from nsysan.latency
    latency = nsysan.latency(nsysan.sample_paths(), by=["model", "variant"]).frame
    mean = {(m, v, r): x for m, v, r, x in latency.select("model", "variant", "range", "range_ms_mean").iter_rows()}
    shares = [100 * mean[(m, v, "preprocess")] / mean[(m, v, "batch_*")] for m, v, r in mean if r == "batch_*"]
    assert any(t.startswith(f"The preprocess stage is the largest in every group ({min(shares):.0f} %") for t in texts)
    # the comparison of the pageable variant calls its h2d stage slower, with the compare analysis's CI
    comparison = nsysan.compare(nsysan.sample_paths(), by=["model", "variant"], baseline={"variant": ""}).frame
    h2d = comparison.filter(pl.col("variant") == "pageable", pl.col("stage") == "h2d", pl.col("metric") == "gpu_proj_ms",
                            pl.col("statistic") == "mean").row(0, named=True)
    assert h2d["verdict"] == "slower"
    assert any(f"h2d GPU time +{h2d['change_pct']:.0f} % (CI +{h2d['ci_low_pct']:.0f} %" in t for t in texts)
    assert any("asynchronous copies use pageable host memory (every group)" in t for t in texts)
    assert any(t.startswith("Launch-bound over forward in ") for t in texts)


def test_sample_html_is_self_contained(sample_page):
    html = render_html(sample_page)
    check_self_contained(html)
    assert html.count('<figure id="fig-') == len(sample_page.figures)
    assert '<nav class="toc"' in html and all(f'href="#{s.id}"' in html for s in sample_page.sections)
    assert "Share of batch (%)" in html and "Bandwidth (GB/s)" in html


def test_names_are_escaped():
    evil = "<img src=x onerror=alert(1)>"
    page = Page(title=evil, subtitle=evil, generated="now", facts=[(evil, evil)], sections=[Section(
        "s", evil, intro=evil, findings=[Finding(evil, figure="f", table="t")], missing=[evil], notes=[evil],
        figures=[Figure("f", evil, "image/png", b"\x89PNG", caption=evil, number=1, width_px=1, height_px=1)],
        tables=[Table("t", evil, [Column("k", evil, unit=evil)], [[evil]], caption=evil, number=1)])])
    html = render_html(page)
    assert evil not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<a class="ref" href="#f">Figure 1</a>' in html and '<a class="ref" href="#t">Table 1</a>' in html


# -- a study folder as nsysan run leaves it ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A NUMA study of vit32x6x512: node 0 (local to the GPU) and a synthetic node 1 whose copies take 1.5× as
    long; a failed run, a skipped one, a successful one never exported, and an export that cannot be read."""
    root = tmp_path_factory.mktemp("outputs") / "numa_study" / "2026-01-01" / "00-00-00"
    reports = root / "nsys_reports"
    meta = {"gpu_numa_node": 0, "batch_size": 10}
    copy_export(sample("vit32x6x512"), reports, sidecar=meta)
    stretch_copies(sample("vit32x6x512"), reports, factor=1.5, sidecar=meta)
    (reports / "pipeline_gpu0_numa0_vit32x2x128.sqlite").write_bytes(b"not an export")
    (root / "logs").mkdir()
    runs = [{"name": "pipeline_gpu0_numa0_vit32x6x512", "status": "ok", "model": "vit32x6x512", "numa": 0},
            {"name": "pipeline_gpu0_numa1_vit32x6x512", "status": "ok", "model": "vit32x6x512", "numa": 1},
            {"name": "pipeline_gpu0_numa0_vit32x2x128", "status": "ok", "model": "vit32x2x128", "numa": 0},
            {"name": "pipeline_gpu0_numa1_vit32x2x128", "status": "failed", "model": "vit32x2x128", "numa": 1,
             "reason": "nsys wrote no report (exit 1): CUDA error: out of memory", "log": "logs/x.log"},
            {"name": "pipeline_gpu1_numa0_vit32x6x512", "status": "skipped", "model": "vit32x6x512", "numa": 0,
             "reason": "GPU 1 not present"},
            {"name": "pipeline_gpu0_numa0_vit0x0x0", "status": "ok", "model": "vit0x0x0", "numa": 0}]
    machine = {"numa_nodes": [0, 1], "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "numa_node": 0}]}
    (root / "results.json").write_text(json.dumps({"format": 1, "experiment": "numa_study", "created": "2026-01-01",
                                                   "nsys": {"version": "2025.3.1.0"}, "machine": machine,
                                                   "runs": runs}))
    (root / "experiment_summary.json").write_text(json.dumps({"experiment": "numa_study", "remote_placement_tested": True,
                                                              "notes": ["skipped: GPU 1 not present"]}))
    return root


def test_study_records_are_found_from_the_folder_and_from_an_export(study):
    for given in ([study.parents[2]], [study], [study / "nsys_reports" / "pipeline_gpu0_numa0_vit32x6x512.sqlite"]):
        found = find_studies(given, nsysan.collect(given).paths)
        assert [r.experiment for r in found.records] == ["numa_study"], given
        record = found.records[0]
        assert record.counts == {"ok": 4, "failed": 1, "skipped": 1}
        assert record.nsys_version == "2025.3.1.0" and record.gpu_names() == ["GPU 0: NVIDIA H100 80GB HBM3"]
        assert record.remote_placement_tested is True


@pytest.fixture(scope="module")
def study_page(study) -> Page:
    return build_report(study)


def test_study_report_lists_what_ran_and_what_failed(study_page):
    page = study_page
    check_references(page)
    assert page.title == "nsysan report: numa_study"
    runs = page.section("runs")
    facts = dict(runs.facts)
    assert facts["Runs"] == "4 ok, 1 failed, 1 skipped" and facts["nsys (runner)"] == "2025.3.1.0"
    not_ok = next(t for t in runs.tables if t.id == "tab-runs-not-ok")
    assert [row[1:4] for row in not_ok.rows] == [
        ["pipeline_gpu0_numa1_vit32x2x128", "failed", "nsys wrote no report (exit 1): CUDA error: out of memory"],
        ["pipeline_gpu1_numa0_vit32x6x512", "skipped", "GPU 1 not present"]]
    unreadable = next(t for t in runs.tables if t.id == "tab-unreadable")
    assert len(unreadable.rows) == 1 and unreadable.rows[0][0].endswith("pipeline_gpu0_numa0_vit32x2x128.sqlite")
    assert any("pipeline_gpu0_numa0_vit0x0x0" in n and "nsysan export" in n for n in runs.notes)
    texts = [f.text for f in runs.findings]
    assert texts[0].startswith("4 of 6 planned run(s) succeeded, 1 skipped, 1 did not finish (1 failed): "
                               "pipeline_gpu0_numa1_vit32x2x128: nsys wrote no report")
    assert texts[1].startswith("1 export(s) could not be read and are left out; 2 analysed")


def test_study_report_shows_the_known_numa_penalty(study_page):
    numa = study_page.section("numa")
    assert [f.id for f in numa.figures] == ["fig-numa"]
    penalty = nsysan.numa(sorted((Path(study_page.section("runs").facts[0][1].split("(")[1].rstrip(")"))
                                  / "nsys_reports").glob("*vit32x6x512.sqlite"))).frame
    h2d = penalty.filter(pl.col("stage") == "h2d", pl.col("metric") == "bandwidth_gbps", pl.col("statistic") == "mean")
    assert abs(h2d["penalty_pct"][0] - (1 / 1.5 - 1) * 100) < 1     # bandwidth falls to 1/1.5 of local
    worst = numa.findings[0].text
    assert worst.startswith("Remote NUMA node 1 costs vit32x6x512") and "against node 0 (CI" in worst
    # grouped by model and numa (the metadata that varies): one row per node in the stage table
    assert study_page.section("stages").tables[0].columns[:2] == [Column("model", "model", numeric=False),
                                                                  Column("numa", "numa", numeric=False)]


def test_cli_report_of_a_study_folder_writes_the_page_and_exits_3(study, tmp_path):
    out = tmp_path / "study.html"
    result = CliRunner().invoke(app, ["report", str(study), "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert "pipeline_gpu0_numa0_vit32x2x128.sqlite" in result.stderr and "1 of 3 input(s) failed" in result.stderr
    html = out.read_text()
    check_self_contained(html)
    assert "numa_study" in html and "CUDA error: out of memory" in html


def test_cli_report_refuses_a_bad_output(study, tmp_path):
    result = CliRunner().invoke(app, ["report", str(study), "-o", str(tmp_path / "x.txt")])
    assert result.exit_code == 1 and "ending in .html" in result.stderr
    inside = study / "report.html"  # inside the input folder: refused, as every nsysan output is
    result = CliRunner().invoke(app, ["report", str(study), "-o", str(inside)])
    assert result.exit_code == 1 and "is an input of this command" in result.stderr and not inside.exists()


# -- a real study run, a distributed run, missing data ------------------------------------------------------------
def test_gpu_run_fixture_report_reads_the_runners_record():
    page = build_report(FIXTURES / "gpu_run")
    check_references(page)
    runs = page.section("runs")
    facts = dict(runs.facts)
    assert facts["GPUs"] == "GPU 0: NVIDIA H100 80GB HBM3" and facts["Runs"] == "3 ok"
    assert runs.findings[0].text == "3 of 3 planned run(s) succeeded."
    assert any("2 successful run(s) have no export" in n for n in runs.notes)
    assert page.section("stages").findings[0].text.startswith("The forward stage takes 70 % of the mean batch time")


def test_distributed_report_has_ranks_comm_and_skew():
    page = build_report(DDP)
    check_references(page)
    dist = page.section("distributed")
    assert dist is not None and [s.id for s in page.sections].index("distributed") == SECTIONS.index("timeline")
    assert {f.id for f in dist.figures} == {"fig-comm", "fig-skew"}
    assert {t.id for t in dist.tables} == {"tab-rank-latency", "tab-rank-util", "tab-comm", "tab-skew", "tab-steps"}
    texts = [f.text for f in dist.findings]
    assert texts[0].startswith("Communication is mostly exposed: 92 % of rank 0's 87.1 ms")
    assert texts[1].startswith("Rank 1 arrives last at 93 of 104 NCCL calls") and "19 of 20 steps" in texts[1]
    # backward's kernels come from the autograd thread: the report counts them (attribution auto -> process)
    assert "attribution=process" in " ".join(page.section("notes").notes)
    stages = page.section("stages").tables[0]
    backward = next(r for r in stages.rows if r[1] == "backward")
    gpu_mean = float(backward[[c.key for c in stages.columns].index("gpu_proj_ms_mean")])
    assert gpu_mean > 5
    check_self_contained(render_html(page))


def test_a_report_without_nvtx_ranges_says_what_it_cannot_compute(tmp_path):
    path = copy_export(sample("vit32x2x128"), tmp_path, sidecar={"batch_size": 10})
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE NVTX_EVENTS")
    page = build_report(path)
    stages = page.section("stages")
    assert stages.missing and "NVTX" in " ".join(stages.missing) and not stages.tables
    assert page.section("bandwidth").figures  # copies need no NVTX range
    timeline = page.section("timeline")  # no batch to window: the whole capture, GPU rows only
    assert not timeline.missing and [f.id for f in timeline.figures] == ["fig-timeline"]
    assert timeline.figures[0].caption == "whole capture"
    check_references(page)
    check_self_contained(render_html(page))


def test_cli_report_of_a_cuda_only_export_draws_its_timeline(tmp_path):
    from builders import MAIN_TID, ExportBuilder

    b = ExportBuilder()
    b.launch(MAIN_TID, 10, 20, 30, 50, name="gemm")
    b.launch(MAIN_TID, 60, 70, 100, 140, name="relu")
    path = b.write(tmp_path / "cuda_only.sqlite")
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert 'id="fig-timeline"' in html and "GPU timeline of cuda_only" in html
    check_self_contained(html)


def test_figures_drawn_in_this_process_equal_the_workers(tmp_path):
    """workers=0 draws in the caller's process; the figures and the page are the same as the workers' ones."""
    path = copy_export(sample("vit32x2x128"), tmp_path, sidecar={"batch_size": 10})
    local, remote = build_report(path, workers=0), build_report(path, workers=2)
    assert [f.id for f in local.figures] == [f.id for f in remote.figures]
    assert [len(f.data) for f in local.figures] == [len(f.data) for f in remote.figures]
    assert [f.text for f in local.findings] == [f.text for f in remote.findings]


def test_plot_theme_is_seaborns():
    """nsysan.plots writes seaborn's theme out (so that drawing does not import seaborn): it must stay seaborn's."""
    import seaborn as sns

    from nsysan.plots.style import DEEP, SEABORN_THEME

    theme = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}
    assert {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in theme.items()} == SEABORN_THEME
    assert sns.color_palette("deep", 10).as_hex() == DEEP


def test_sections_are_built_after_the_phases_they_read():
    """Each section is built as soon as its phase is done (so figures draw while later analyses run); reading an
    analysis of a later phase is an error, never an empty section."""
    from nsysan.report.build import SECTIONS
    from nsysan.report.data import ANALYSES, PHASES, Analyses

    assert {phase for phase, _ in SECTIONS} <= {*PHASES, "end"}
    assert set(ANALYSES) == set(PHASES)
    found = Analyses(inputs=[], collection=nsysan.collect([]), unreadable=[], studies=find_studies([], []),
                     by=("report",), select=nsysan.selection.DEFAULT, attribution="thread", baseline=None,
                     done=["info", "latency"])
    with pytest.raises(RuntimeError, match="'numa' analysis was read before its phase"):
        found["numa"]
    assert found["latency"].error == "not computed"  # its phase ran and did not compute it


def test_the_report_process_never_imports_matplotlib(tmp_path):
    """Figures are drawn by worker processes; the report's own process (analyses, tables, findings, the frame
    re-arrangements of nsysan.plots.frames) runs without matplotlib, which it would import for seconds."""
    import subprocess
    import sys

    code = ("import sys, nsysan; from nsysan.report import build_report, render_html; "
            "page = build_report(nsysan.sample_paths()[:2], workers=1); render_html(page); "
            "assert page.figures; print(sorted(m for m in ('matplotlib', 'seaborn', 'pandas', 'pyarrow') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
