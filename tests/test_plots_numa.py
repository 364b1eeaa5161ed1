"""NUMA penalty figures on SYNTHETIC remote-node runs with a known answer, and the plain statement on the
one-node samples.

The remote runs are copies of real sample exports whose memcpy durations were stretched
(nsysan.testing.synthetic), written to a temporary folder: on GPU 0 by 1.5 (bandwidth penalty
1/1.5 - 1 = -33.3 %), on GPU 1 by 2 (-50 %); CPU range times are untouched (penalty 0).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import polars as pl
import pytest
from matplotlib.container import ErrorbarContainer
from test_plots import assert_axes_labelled, errorbar_x_segments, save, title

import nsysan
from nsysan import plots
from nsysan.analyses.compare import stage_observations
from nsysan.analyses.numa import NumaNotComparable, numa_heatmap, numa_penalty
from nsysan.engine import pooled
from nsysan.selection import Selection
from nsysan.testing.synthetic import copy_export, stretch_copies

FACTORS = {0: 1.5, 1: 2.0}


def _sample(model: str):
    return next(p for p in nsysan.sample_paths() if p.name == f"pipeline_gpu0_numa0_{model}.sqlite")


@pytest.fixture(scope="module")
def penalty(tmp_path_factory) -> pl.DataFrame:
    """vit0x0x0 on GPUs 0 and 1, vit32x6x512 on GPU 0; node 0 local (real), node 1 remote (copies stretched)."""
    folder = tmp_path_factory.mktemp("numa_plots")
    for model, gpus in (("vit0x0x0", (0, 1)), ("vit32x6x512", (0,))):
        for gpu in gpus:
            copy_export(_sample(model), folder, name=f"pipeline_gpu{gpu}_numa0_{model}", sidecar={"gpu_numa_node": 0})
            stretch_copies(_sample(model), folder, factor=FACTORS[gpu], name=f"pipeline_gpu{gpu}_numa1_{model}")
    return nsysan.numa(folder).frame


def _texts(ax) -> dict[tuple[int, int], str]:
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}


def test_heatmap_cells_are_the_analysis_pivot_with_cis(penalty):
    fig = plots.numa_penalty_heatmap(penalty, metric="bandwidth_gbps")
    save(fig, "numa_heatmap_bandwidth")
    wide = numa_heatmap(penalty, metric="bandwidth_gbps")
    stages = wide.columns[wide.columns.index("mean_penalty_pct") + 1:]
    assert stages == ["h2d (Host-to-Device)", "d2h (Device-to-Host)"]
    ax = fig.axes[0]
    matrix = np.ma.filled(ax.images[0].get_array(), np.nan)
    np.testing.assert_allclose(matrix, wide.select(*stages, "mean_penalty_pct").to_numpy())
    # the known answer: bandwidth x 1/factor
    for row, gpu in zip(matrix, wide["gpu"]):
        np.testing.assert_allclose(row, 100 * (1 / FACTORS[gpu] - 1), atol=0.5)
    texts = _texts(ax)
    chosen = penalty.filter(metric="bandwidth_gbps", statistic="mean")
    for i, key in enumerate(wide.select("model", "gpu").rows()):
        for j, stage in enumerate(["h2d", "d2h"]):
            cell = chosen.filter(model=key[0], gpu=key[1], stage=stage).row(0, named=True)
            text = texts[(i, j)]
            assert text.get_text() == (f"{cell['penalty_pct']:+.1f} %\n"
                                       f"[{cell['ci_low_pct']:+.1f}, {cell['ci_high_pct']:+.1f}]")
            assert cell["verdict"] == "slower" and text.get_fontweight() == "bold"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("vit") and labels[0].endswith("node 1 vs 0")
    assert ax.images[0].get_cmap().name == "RdBu"  # lower bandwidth is worse: red at negative
    assert "copy bandwidth" in title(fig) and "per stage" in title(fig)
    assert_axes_labelled(fig)


def test_heatmap_of_unchanged_range_times_is_zero(penalty):
    fig = plots.numa_penalty_heatmap(penalty)
    matrix = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    wide = numa_heatmap(penalty)
    assert matrix.shape == (wide.height, len(wide.columns) - wide.columns.index("mean_penalty_pct"))
    np.testing.assert_allclose(matrix, 0.0, atol=1e-9)  # CPU times were not stretched
    assert fig.axes[0].images[0].get_cmap().name == "RdBu_r"


def test_heatmap_model_by_gpu_per_stage(penalty):
    fig = plots.numa_penalty_heatmap(penalty, metric="gpu_proj_ms", across="gpu")
    save(fig, "numa_heatmap_model_x_gpu")
    wide = numa_heatmap(penalty, metric="gpu_proj_ms")
    stages = wide.columns[wide.columns.index("mean_penalty_pct") + 1:]
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title(loc="left") for ax in panels] == stages
    for ax, stage in zip(panels, stages):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["gpu=0", "gpu=1"]
        models = [t.get_text().split(" · ")[0] for t in ax.get_yticklabels()]
        matrix = np.ma.filled(ax.images[0].get_array(), np.nan)
        for i, model in enumerate(models):
            for j, gpu in enumerate((0, 1)):
                hit = wide.filter(model=model, gpu=gpu)
                if hit.height:
                    assert matrix[i, j] == pytest.approx(hit[stage][0])
                else:
                    assert np.isnan(matrix[i, j]) and _texts(ax)[(i, j)].get_text() == "—"
    assert np.isnan(np.ma.filled(panels[0].images[0].get_array(), np.nan)).sum() == 1  # vit32x6x512 on GPU 1
    assert "per stage and gpu" in title(fig)
    assert_axes_labelled(fig)


def test_forest_of_numa_penalty(penalty):
    fig = plots.comparison_forest(penalty, metrics=["bandwidth_gbps/mean"])
    ticks = [t.get_text().strip() for t in fig.axes[0].get_yticklabels()]
    assert any(t.endswith("node 1 vs 0") for t in ticks)
    chosen = penalty.filter(metric="bandwidth_gbps", statistic="mean")
    header, rows = None, {}
    for y, tick in enumerate(ticks):  # bold group headers, then that group's stages
        if tick.endswith("vs 0"):
            header = tick
        else:
            rows[y] = (header, tick)
    drawn = 0
    for ax in fig.axes:
        for container in (c for c in ax.containers if isinstance(c, ErrorbarContainer)):
            xs, ys = container.lines[0].get_data()
            for x, y, (lo, hi) in zip(xs, ys, errorbar_x_segments(container)):
                group, stage = rows[int(y)]
                model, gpu = group.split(" · ")[:2]
                row = chosen.filter(model=model, gpu=int(gpu.removeprefix("gpu=")), stage=stage,
                                    direction=ax.get_title(loc="left").split("\n")[0].split("(")[-1].rstrip(")")
                                    .replace("H2D", "Host-to-Device").replace("D2H", "Device-to-Host"))
                assert row.height == 1
                assert x == pytest.approx(row["penalty_pct"][0])
                assert (lo, hi) == pytest.approx((row["ci_low_pct"][0], row["ci_high_pct"][0]))
                drawn += 1
    assert drawn == chosen.height
    assert "NUMA penalty" in title(fig)


def test_one_node_gets_a_plain_statement():
    result = nsysan.numa(nsysan.sample_paths())
    samples = pooled(nsysan.sample_paths(), partial(stage_observations, select=Selection()), by=()).frame
    with pytest.raises(NumaNotComparable) as raised:
        numa_penalty(samples)
    assert result.frame.is_empty() and result.notes == (str(raised.value),)
    fig = plots.numa_penalty_heatmap(result)
    save(fig, "numa_one_node")
    assert not any(ax.images for ax in fig.axes)
    words = [t.get_text().replace("\n", " ") for ax in fig.axes for t in ax.texts]
    assert words == [str(raised.value)]
    assert "only one NUMA node" in words[0]
    assert title(fig) == "NUMA penalty: nothing to compare"
    assert plots.numa_penalty_heatmap(str(raised.value)).axes[0].texts[0].get_text().startswith("only one")
