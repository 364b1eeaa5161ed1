"""nsysan.plots on the bundled samples: every figure draws the analysis frame's own cells (read back from the
Axes), the expected number of bars and series, labelled axes with units, and a title naming the selection.

Frames come from the per-report analyses (``range_trace``, ``copy_trace``, ``batch_trace``,
``gpu_utilization``) tagged with run metadata here and pooled with the summary functions, so the tests do
not depend on the collection-level API. The helpers at the top are shared with test_plots_numa.py and
test_plots_timeline.py.
"""
from __future__ import annotations

import math
import re
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure

import nsysan
from nsysan import plots
from nsysan.analyses.bandwidth import bandwidth_summary, copy_size_histogram, copy_trace
from nsysan.analyses.utilization import gpu_utilization, top_kernels, utilization_summary
from nsysan.engine import pooled
from nsysan.plots.compare import DEFAULT_METRICS
from nsysan.plots.style import shorten

BY = ("model", "variant")
UNIT = re.compile(r"\([^()]+\)$")
OUT = Path("/tmp/plots")


# -- shared helpers -----------------------------------------------------------------------------------------
def tagged(paths, analysis) -> pl.DataFrame:
    """``analysis(report)`` of every export, tagged with ``report`` and its metadata, as the API does."""
    return pooled(paths, analysis, by=()).frame


def title(fig: Figure) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def _numeric(text: str) -> bool:
    text = text.replace("−", "-").replace(",", "").strip()
    if text.startswith("$"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def assert_axes_labelled(fig: Figure) -> None:
    """Every drawn axis with tick labels has a label; where the ticks are numbers, the label ends with a unit
    in parentheses, e.g. "(ms)"."""
    fig.canvas.draw()
    checked = 0
    for ax in fig.axes:
        if not ax.axison:
            continue
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            ticks = [t.get_text() for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            if not ticks:
                continue
            checked += 1
            assert label, f"unlabelled axis with ticks {ticks[:3]} in {title(fig)!r}"
            if all(_numeric(t) for t in ticks):
                assert UNIT.search(label), f"axis label {label!r} names no unit in {title(fig)!r}"
    assert checked


def save(fig: Figure, name: str) -> None:
    """Keep a PNG of every figure the tests draw, for looking at (/tmp/plots)."""
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"test_{name}.png")


def bars(ax: Axes, label: str) -> BarContainer:
    found = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label]
    assert len(found) == 1, f"no bar series {label!r}; have {[c.get_label() for c in ax.containers]}"
    return found[0]


def line(ax: Axes, label: str):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, f"no line {label!r}; have {[ln.get_label() for ln in ax.get_lines()]}"
    return found[0]


def errorbar_x_segments(container: ErrorbarContainer) -> np.ndarray:
    """(n, 2) x ends of a horizontal error bar container's whiskers."""
    segments = container.lines[2][0].get_segments()
    return np.array([[s[0][0], s[1][0]] for s in segments]).reshape(-1, 2)


def cells(frame: pl.DataFrame, keys, values, stage: str, column: str) -> float:
    row = frame.filter(pl.col("range") == stage, *[pl.col(k).eq_missing(v) for k, v in zip(keys, values)])
    assert row.height == 1
    value = row[column][0]
    return math.nan if value is None else value


# -- frames from the samples --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paths():
    return nsysan.sample_paths()


@pytest.fixture(scope="module")
def latency(paths) -> pl.DataFrame:
    return nsysan.latency(paths, by=BY).frame


@pytest.fixture(scope="module")
def throughput(paths) -> pl.DataFrame:
    return nsysan.throughput(paths, by=BY).frame


@pytest.fixture(scope="module")
def copies(paths) -> pl.DataFrame:
    return tagged(paths, copy_trace)


@pytest.fixture(scope="module")
def parts(paths) -> pl.DataFrame:
    return tagged(paths, lambda r: gpu_utilization(r, window="batches"))


@pytest.fixture(scope="module")
def comparison(paths) -> pl.DataFrame:
    return nsysan.compare(paths, by=BY, baseline={"variant": ""}).frame


# -- stage breakdown ----------------------------------------------------------------------------------------
def test_stage_breakdown_draws_p50_segments_and_p95_whiskers(latency):
    before = latency.clone()
    fig = plots.stage_breakdown(latency)
    save(fig, "stage_breakdown")
    assert latency.equals(before)
    groups = latency.select(BY).unique(maintain_order=True).rows()
    assert len(groups) == 5
    stages = ["preprocess", "h2d", "forward", "d2h"]
    cpu, gpu = fig.axes[:2]
    for ax, prefix in ((cpu, "range_ms"), (gpu, "gpu_proj_ms")):
        left = np.zeros(len(groups))
        for stage in stages:
            container = bars(ax, stage)
            assert len(container.patches) == len(groups)
            expected = np.array([cells(latency, BY, g, stage, f"{prefix}_p50") for g in groups])
            widths = np.array([p.get_width() for p in container.patches])
            np.testing.assert_allclose(widths, np.nan_to_num(expected))
            np.testing.assert_allclose([p.get_x() for p in container.patches], left)
            p95 = np.array([cells(latency, BY, g, stage, f"{prefix}_p95") for g in groups])
            whisker = next(c for c in ax.containers if isinstance(c, ErrorbarContainer)
                       and c.get_label() == f"_whisker:{stage}")
            drawn = ~np.isnan(expected)
            np.testing.assert_allclose(errorbar_x_segments(whisker),
                                       np.stack([left[drawn] + expected[drawn], left[drawn] + p95[drawn]], 1))
            left += np.nan_to_num(expected)
        batch = line(ax, "batch_* p50")
        np.testing.assert_allclose(batch.get_xdata(), [cells(latency, BY, g, "batch_*", f"{prefix}_p50")
                                                       for g in groups])
    # preprocess launches no GPU work: no GPU segment, and the note says so
    assert all(p.get_width() == 0 for p in bars(gpu, "preprocess").patches)
    assert "no bar: preprocess (GPU projected time)" in " ".join(plots.notes(fig)).replace("No GPU work, so ", "")
    assert [t.get_text() for t in cpu.get_yticklabels()] == [" · ".join(v for v in g if v) for g in groups]
    assert "vit32x6x512 · pageable" in [t.get_text() for t in cpu.get_yticklabels()]
    assert "model, variant" in title(fig) and "preprocess, h2d, forward, d2h" in title(fig)
    assert "p50" in title(fig) and "p95" in title(fig)
    assert_axes_labelled(fig)


def test_stage_breakdown_options_and_given_axes(latency):
    fig = plots.stage_breakdown(latency, stages=["forward"], times=["gpu_busy_ms"], statistic="mean",
                                whisker=None, total=None)
    ax = fig.axes[0]
    groups = latency.select(BY).unique(maintain_order=True).rows()
    widths = [p.get_width() for p in bars(ax, "forward").patches]
    np.testing.assert_allclose(widths, np.nan_to_num([cells(latency, BY, g, "forward", "gpu_busy_ms_mean")
                                                       for g in groups]))
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert ax.get_xlabel() == "GPU busy time, mean (ms)"
    own = Figure()
    axes = own.subplots(1, 2)
    assert plots.stage_breakdown(latency, ax=list(axes)) is own
    with pytest.raises(ValueError, match="2 panel"):
        plots.stage_breakdown(latency, ax=axes[0])


# -- scaling ----------------------------------------------------------------------------------------------------
def test_model_shape_and_transfer_share(latency):
    runs = pl.DataFrame({"model": ["vit32x6x512", "vit0x0x0", "resnet"], "resolution": [224, 224, 64]})
    shape = plots.model_shape(runs)
    assert shape.select("patch", "depth", "dim", "patches").rows() == [
        (32, 6, 512, 49), (0, 0, 0, None), (None, None, None, None)]
    share = plots.transfer_share(latency)
    for model, variant, transfer, compute, pct in share.select(
            "model", "variant", "transfer_ms", "compute_ms", "transfer_share_pct").iter_rows():
        h2d, d2h, fwd = (np.nan_to_num(cells(latency, BY, (model, variant), s, "gpu_proj_ms_mean"))
                         for s in ("h2d", "d2h", "forward"))
        assert transfer == pytest.approx(h2d + d2h) and compute == pytest.approx(fwd)
        assert pct == pytest.approx(100 * (h2d + d2h) / (h2d + d2h + fwd))
    assert share.filter(pl.col("model") == "vit0x0x0")["transfer_share_pct"][0] > 95  # the no-op model copies


def test_scaling_draws_latency_throughput_and_share_per_series(latency, throughput):
    fig = plots.scaling(latency, throughput, x="depth", series=("variant",))
    save(fig, "scaling_depth")
    ax_lat, ax_rate, ax_gpu, ax_share = fig.axes[:4]
    pinned = [("vit0x0x0", 0), ("vit32x2x128", 2), ("vit32x6x512", 6), ("vit16x12x1024", 12)]
    key = [(m, None) for m, _ in pinned]
    series = line(ax_lat, "variant=none")
    np.testing.assert_allclose(series.get_xdata(), [d for _, d in pinned])
    np.testing.assert_allclose(series.get_ydata(), [cells(latency, BY, g, "batch_*", "range_ms_p50") for g in key])
    rate = throughput.filter(pl.col("variant").is_null())
    expected = [rate.filter(pl.col("model") == m)["samples_per_s"][0] for m, _ in pinned]
    np.testing.assert_allclose(line(ax_rate, "variant=none").get_ydata(), expected)
    np.testing.assert_allclose(line(ax_gpu, "compute · variant=none").get_ydata(),
                               [np.nan_to_num(cells(latency, BY, g, "forward", "gpu_proj_ms_mean")) for g in key])
    share = plots.transfer_share(latency)
    np.testing.assert_allclose(line(ax_share, "variant=none").get_ydata(),
                               [share.filter(pl.col("model") == m, pl.col("variant").is_null())["transfer_share_pct"][0]
                                for m, _ in pinned])
    def labelled(ax):
        return [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]

    assert labelled(ax_lat) == ["variant=none", "pageable"]
    assert len(labelled(ax_gpu)) == 4  # compute and transfer for each of the 2 series
    assert line(ax_lat, "pageable").get_xdata().tolist() == [6]
    # the no-op model is all transfer; from depth 2 compute dominates, and the figure marks it
    assert any("compute > transfer" in t.get_text() and "depth 2" in t.get_text() for t in ax_share.texts)
    assert "depth" in title(fig) and "variant" in title(fig)
    assert ax_share.get_xlabel() == "Model depth (layers)"
    assert_axes_labelled(fig)


def test_scaling_against_patch_count_from_a_resolution_column(latency, throughput):
    sizes = {"vit0x0x0": 224, "vit32x2x128": 256, "vit32x6x512": 512, "vit16x12x1024": 1024}
    with_res = latency.select(pl.col("model").replace_strict(sizes, return_dtype=pl.Int64).alias("resolution"),
                              pl.all()).filter(pl.col("variant").is_null())
    fig = plots.scaling(with_res, x="patches", series=())
    save(fig, "scaling_patches")
    ax_lat = fig.axes[0]
    series = line(ax_lat, "all runs")
    # vit0x0x0 (patch 0) has no patch count and is left out; the others: (resolution // patch)^2
    np.testing.assert_allclose(series.get_xdata(), [(256 // 32) ** 2, (512 // 32) ** 2, (1024 // 16) ** 2])
    models = ["vit32x2x128", "vit32x6x512", "vit16x12x1024"]
    np.testing.assert_allclose(series.get_ydata(), [cells(latency, BY, (m, None), "batch_*", "range_ms_p50")
                                                    for m in models])
    assert fig.axes[2].get_xlabel() == "Patches per image (count)"
    assert_axes_labelled(fig)


def test_scaling_refuses_ambiguous_series_and_missing_resolution(latency):
    with pytest.raises(ValueError, match="several groups at the same dim"):
        plots.scaling(latency, x="dim", series=())
    with pytest.raises(ValueError, match="resolution"):
        plots.scaling(latency, x="patches")


# -- comparison forest --------------------------------------------------------------------------------------
def test_comparison_forest_draws_change_and_ci_by_verdict(comparison):
    fig = plots.comparison_forest(comparison)
    save(fig, "comparison_forest")
    drawn = comparison.filter(pl.col("verdict") != "baseline", pl.col("change_pct").is_not_null(),
                              pl.format("{}/{}", "metric", "statistic").is_in(list(DEFAULT_METRICS)))
    assert drawn["model"].unique().to_list() == ["vit32x6x512"]  # the one model with a pinned baseline
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert len(panels) == 5  # CPU, GPU, bandwidth D2H and H2D, throughput
    ticks = [t.get_text().strip() for t in panels[0].get_yticklabels()]
    points = 0
    for ax in panels:
        for container in (c for c in ax.containers if isinstance(c, ErrorbarContainer)):
            verdict = container.get_label()
            xs, ys = container.lines[0].get_data()
            for x, y, (lo, hi) in zip(xs, ys, errorbar_x_segments(container)):
                row = drawn.filter(pl.col("stage") == ticks[int(y)], pl.col("verdict") == verdict,
                                   pl.col("change_pct").is_between(x - 1e-9, x + 1e-9))
                assert row.height == 1, (ax.get_title(loc="left"), ticks[int(y)], verdict, x)
                assert (lo, hi) == pytest.approx((row["ci_low_pct"][0], row["ci_high_pct"][0]))
                points += 1
            assert container.lines[0].get_color() == plots.style.VERDICT_COLORS[verdict]
    assert points == drawn.height
    h2d = drawn.filter(stage="h2d", metric="range_ms")
    assert h2d["verdict"][0] == "slower"  # pageable host memory: h2d CPU time several times the pinned one
    assert "variant=none" in title(fig)
    assert_axes_labelled(fig)


def test_comparison_forest_selects_metrics_and_stages(comparison):
    fig = plots.comparison_forest(comparison, metrics=["range_ms/p95"], stages=["h2d", "d2h"],
                                  include_baseline=True)
    ax = fig.axes[0]
    ticks = [t.get_text().strip() for t in ax.get_yticklabels()]
    assert ticks.count("h2d") == 5 and "forward" not in ticks  # 4 baselines of their own, and pageable
    verdicts = {c.get_label() for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert "baseline" in verdicts
    with pytest.raises(ValueError, match="no rows"):
        plots.comparison_forest(comparison, metrics=["nope/mean"])


# -- bandwidth ----------------------------------------------------------------------------------------------------
def test_bandwidth_chart_draws_gbps_per_kind_and_size_histogram(copies):
    summary = bandwidth_summary(copies, by=BY)
    histogram = copy_size_histogram(copies, by=BY)
    fig = plots.bandwidth_chart(summary, histogram)
    save(fig, "bandwidth")
    rate_axes = [ax for ax in fig.axes if ax.get_title(loc="left").startswith(("Host-to-Device", "Device-to-Host"))]
    assert [ax.get_title(loc="left") for ax in rate_axes] == ["Host-to-Device (H2D)", "Device-to-Host (D2H)"]
    assert not any("Memset" in ax.get_title(loc="left") for ax in fig.axes)
    groups = summary.select(BY).unique(maintain_order=True).rows()
    for ax in rate_axes:
        direction = ax.get_title(loc="left").split(" (")[0]
        rows = summary.filter(pl.col("direction") == direction)
        containers = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert sum(len(c.patches) for c in containers) == rows.height
        for container in containers:
            src, dst = container.get_label().split(": ", 1)[1].split(" → ")
            expected = rows.filter(pl.col("src_kind") == src, pl.col("dst_kind") == dst)
            widths = [p.get_width() for p in container.patches]
            order = [groups.index(g) for g in expected.select(BY).rows()]
            np.testing.assert_allclose(widths, expected["bandwidth_gbps"].to_numpy()[np.argsort(order)])
            hatched = [bool(p.get_hatch()) for p in container.patches]
            assert hatched == expected["flags"].is_not_null().to_numpy()[np.argsort(order)].tolist()
    pinned = summary.filter(model="vit32x6x512", direction="Host-to-Device", src_kind="Pinned")
    assert pinned.height == 1 and pinned["flags"][0] is None  # pinned copies are not flagged...
    pageable = summary.filter(direction="Host-to-Device", src_kind="Pageable")
    assert pageable["flags"].is_not_null().all()  # ...pageable async ones are (hatched)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    for image, direction in zip(images, ("Host-to-Device", "Device-to-Host")):
        ax = image.axes
        part = histogram.filter(pl.col("direction") == direction)
        buckets = part.select("size_from_bytes", "size_bucket").unique().sort("size_from_bytes")
        assert [t.get_text() for t in ax.get_xticklabels()] == buckets["size_bucket"].to_list()
        matrix = np.ma.filled(image.get_array(), np.nan)
        series = part.select(*BY, "src_kind", "dst_kind").unique(maintain_order=True)
        assert matrix.shape == (series.height, buckets.height)
        for i, key in enumerate(series.iter_rows(named=True)):
            rows = part.filter(*[pl.col(k).eq_missing(v) for k, v in key.items()])
            for j, size in enumerate(buckets["size_from_bytes"]):
                hit = rows.filter(pl.col("size_from_bytes") == size)["copies"]
                assert (matrix[i, j] == hit[0]) if hit.len() else np.isnan(matrix[i, j])
    assert "model, variant" in title(fig)
    assert_axes_labelled(fig)


def test_bandwidth_chart_memsets_on_request(copies):
    summary = bandwidth_summary(copies, by=BY)
    fig = plots.bandwidth_chart(summary, include_memset=True, directions=["Memset"])
    ax = fig.axes[0]
    assert ax.get_title(loc="left").startswith("Memset")
    memsets = summary.filter(direction="Memset")
    assert sorted(p.get_width() for c in ax.containers for p in c.patches) == pytest.approx(
        sorted(memsets["bandwidth_gbps"].to_list()))
    assert len(fig.axes) == 1  # no histogram given


# -- utilization ---------------------------------------------------------------------------------------------------
def test_busy_idle_stacks_kernel_copy_only_and_idle_shares(parts):
    summary = utilization_summary(parts, by=BY)
    fig = plots.busy_idle(summary)
    save(fig, "busy_idle")
    ax = fig.axes[0]
    kernel = bars(ax, "kernels (with or without copies)")
    copy = bars(ax, "copies only")
    idle = bars(ax, "idle")
    np.testing.assert_allclose([p.get_width() for p in kernel.patches], summary["utilization_pct"].to_numpy())
    np.testing.assert_allclose([p.get_width() for p in copy.patches],
                               (summary["busy_pct"] - summary["utilization_pct"]).to_numpy())
    np.testing.assert_allclose([p.get_width() for p in idle.patches], summary["idle_pct"].to_numpy())
    np.testing.assert_allclose([p.get_x() + p.get_width() for p in idle.patches], 100)
    assert len(kernel.patches) == summary.height == 5
    assert "batches" in title(fig)
    assert_axes_labelled(fig)


def test_busy_idle_one_bar_per_window(paths):
    path = next(p for p in paths if p.name.endswith("vit32x6x512.sqlite"))
    summary = pl.concat([utilization_summary(tagged([path], lambda r, w=w: gpu_utilization(r, window=w)), by=("model",))
                         for w in ("capture", "forward")])
    fig = plots.busy_idle(summary)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["vit32x6x512 · GPU 0 · capture", "vit32x6x512 · GPU 0 · forward"]
    np.testing.assert_allclose([p.get_width() for p in bars(fig.axes[0], "idle").patches], summary["idle_pct"])
    assert "capture, forward" in title(fig)


@pytest.mark.parametrize("weight", ["time", "count"])
def test_idle_gaps_histogram_holds_every_gap(parts, weight):
    summary = utilization_summary(parts, by=BY)
    fig = plots.idle_gaps(parts, by=BY, weight=weight)
    save(fig, f"idle_gaps_{weight}")
    ax = fig.axes[0]
    polygons = [p for p in ax.patches if p.get_label() and not p.get_label().startswith("_")]
    assert len(polygons) == summary.height
    for polygon in polygons:
        label = polygon.get_label()
        row = next(r for r in summary.iter_rows(named=True)
               if label.startswith(" · ".join(v for v in (r["model"], r["variant"]) if v) + " · GPU"))
        heights = polygon.get_xy()[1:-1:2, 1]
        if weight == "count":
            assert heights.sum() == pytest.approx(row["idle_gaps"])
        else:
            gaps = parts.filter(pl.col("model") == row["model"], pl.col("variant").eq_missing(row["variant"]))
            assert heights.sum() == pytest.approx(gaps["gaps_ns"].explode().sum() / 1e6)
        assert f"({row['idle_gaps']:,} gaps)" in label
    assert ax.get_xscale() == "log"
    assert_axes_labelled(fig)


def test_top_kernels_chart_draws_shares_with_shortened_names(parts):
    top = top_kernels(parts, by=BY, top=8)
    fig = plots.top_kernels_chart(top, name_width=30)
    save(fig, "top_kernels")
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 5
    for ax in panels:
        group = ax.get_title(loc="left").removesuffix(" · GPU 0")
        model, _, variant = group.partition(" · ")
        rows = top.filter(pl.col("model") == model, pl.col("variant").eq_missing(variant or None))
        container = next(c for c in ax.containers if isinstance(c, BarContainer))
        np.testing.assert_allclose([p.get_width() for p in container.patches], rows["busy_share_pct"].to_numpy())
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert names == [shorten(n, 30) for n in rows["name"]]
        assert all(len(n) <= 30 for n in names)
    assert any(n.endswith("…") for ax in panels for n in (t.get_text() for t in ax.get_yticklabels()))
    assert_axes_labelled(fig)


# -- style, safety ----------------------------------------------------------------------------------------------
def test_shorten_and_notes():
    assert shorten("short") == "short"
    assert shorten("x" * 50, 10) == "x" * 9 + "…"
    fig, _axes = plots.style.new_figure(figsize=(4, 3))
    plots.style.add_note(fig, "first")
    plots.style.add_note(fig, "second")
    assert plots.notes(fig) == ["first", "second"]


def test_figures_leave_pyplot_alone_and_build_in_threads(latency, copies):
    summary = bandwidth_summary(copies, by=BY)
    before = plt.get_fignums()
    figures, errors = [], []

    def build(i):
        try:
            figures.append(plots.stage_breakdown(latency) if i % 2 else plots.bandwidth_chart(summary))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(figures) == 6
    assert plt.get_fignums() == before
    for fig in figures:
        assert isinstance(fig, Figure)
        assert fig.axes[0].get_facecolor()[:3] == (1.0, 1.0, 1.0)  # the theme's white axes
