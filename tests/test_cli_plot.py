"""``nsysan plot KIND PATHS -o FILE``: every kind writes a real PNG, SVG or PDF of the figure nsysan.plots draws
from the matching analysis; the timeline window's syntax; one-line errors with exit code 1 for what cannot be
drawn."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import nsysan
from nsysan.cli import app
from nsysan.cli.figures import KINDS, timeline_window

DDP = Path(__file__).parent / "fixtures" / "h200x2" / "ddp_resnet18_2gpu.sqlite"
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-", ".svg": b"<?xml"}


@pytest.fixture(scope="module")
def pair() -> list[str]:
    """The pinned and pageable runs of vit32x6x512: two groups to compare, quick to read."""
    return [str(p) for p in nsysan.sample_paths() if "vit32x6x512" in p.name]


def plot(*args: str):
    return CliRunner().invoke(app, ["plot", *args])


@pytest.mark.parametrize(("kind", "suffix"), [("stages", ".png"), ("compare", ".svg"), ("bandwidth", ".pdf"),
                                              ("busy", ".png"), ("gaps", ".png"), ("kernels", ".svg"),
                                              ("timeline", ".png"), ("numa", ".png")])
def test_every_single_gpu_kind_writes_its_figure(pair, tmp_path, kind, suffix):
    out = tmp_path / f"{kind}{suffix}"
    result = plot(kind, *pair, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(MAGIC[suffix])
    assert f"wrote {out}" in result.stderr
    if kind == "numa":  # one NUMA node: the figure is the analysis's sentence, and the note is printed
        assert "only one NUMA node" in result.stderr


@pytest.mark.parametrize("kind", ["skew", "comm", "timeline"])
def test_distributed_kinds(tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    extra = ["--window", "step_*:4"] if kind == "timeline" else []
    result = plot(kind, str(DDP), "-o", str(out), *extra)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(MAGIC[".png"])


def test_scaling_over_the_sample(tmp_path):
    out = tmp_path / "scaling.png"
    result = plot("scaling", "--sample", "-o", str(out), "--x", "depth")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000


def test_errors_are_one_line(pair, tmp_path):
    result = plot("pie", *pair, "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "unknown figure 'pie'; choose from stages" in result.stderr
    result = plot("stages", *pair, "-o", str(tmp_path / "x.gif"))
    assert result.exit_code == 1 and "ending in .png, .svg, .pdf" in result.stderr
    result = plot("skew", *pair, "-o", str(tmp_path / "x.png"))  # no NCCL in a single-GPU pipeline
    assert result.exit_code == 1 and "nothing to draw for skew" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()
    result = plot("timeline", *pair, "-o", str(tmp_path / "t.png"), "--window", "batch_*:0")
    assert result.exit_code == 1 and "COUNT >= 1" in result.stderr


def test_every_kind_has_a_figure_and_every_figure_a_kind():
    from nsysan.cli.figures import _DRAW

    assert set(_DRAW) == set(KINDS)


def test_timeline_window_syntax():
    assert timeline_window(None, ("batch_*", "step_*")) == [("batch_*", 3), ("step_*", 3), "capture"]
    assert timeline_window("capture", ()) == ["capture"]
    assert timeline_window("forward", ()) == ["forward"]
    assert timeline_window("batch_*:5", ()) == [("batch_*", 5)]
    assert timeline_window("batch_*:5:10", ()) == [("batch_*", 5, 10)]
    assert timeline_window("100,2000", ()) == [(100, 2000)]


def test_help_lists_every_kind():
    result = CliRunner().invoke(app, ["plot", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for kind in KINDS:
        assert f"{kind}:" in result.output


def test_timeline_of_an_export_without_nvtx_is_its_capture(tmp_path):
    """No NVTX_EVENTS (a CUDA-only capture): the default window has no batch to find, so the capture is drawn."""
    from builders import MAIN_TID, ExportBuilder

    b = ExportBuilder()
    b.launch(MAIN_TID, 10, 20, 30, 50, name="gemm")
    b.launch(MAIN_TID, 60, 70, 100, 140, name="relu")
    path = b.write(tmp_path / "cuda_only.sqlite")
    for extra in ([], ["--window", "capture"]):
        out = tmp_path / f"t{len(extra)}.png"
        result = plot("timeline", str(path), "-o", str(out), *extra)
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(MAGIC[".png"])
    result = plot("timeline", str(path), "-o", str(tmp_path / "x.png"), "--window", "step_*:2")
    assert result.exit_code == 1 and "no NVTX ranges" in result.stderr and "Traceback" not in result.output
