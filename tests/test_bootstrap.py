"""nsysan.bootstrap: the ratio estimate, reproducibility, coverage on data with a known answer, verdicts."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsysan.bootstrap import block_length, bootstrap_statistic, ratio_ci, reducer, verdict

Z95 = 1.6448536269514722  # standard normal quantile at 0.95


def test_estimate_is_the_ratio_of_the_statistics_on_the_full_samples():
    rng = np.random.default_rng(1)
    a, b = rng.gamma(2.0, 3.0, 40), rng.gamma(2.0, 4.0, 25)
    assert ratio_ci(a, b, statistic="mean").estimate == pytest.approx(b.mean() / a.mean(), rel=1e-12)
    assert ratio_ci(a, b, statistic="p95").estimate == pytest.approx(
        np.percentile(b, 95) / np.percentile(a, 95), rel=1e-12)
    assert ratio_ci(a, b, statistic="median").estimate == pytest.approx(np.median(b) / np.median(a), rel=1e-12)
    assert ratio_ci(a, b, statistic="rate").estimate == pytest.approx(a.mean() / b.mean(), rel=1e-12)
    # Records (value, weight): sum(v w) / sum(w), e.g. total bytes / total copy time.
    wa, wb = np.column_stack([a, rng.uniform(1, 2, a.size)]), np.column_stack([b, rng.uniform(1, 2, b.size)])
    expected = ((wb[:, 0] * wb[:, 1]).sum() / wb[:, 1].sum()) / ((wa[:, 0] * wa[:, 1]).sum() / wa[:, 1].sum())
    assert ratio_ci(wa, wb, statistic="weighted_mean").estimate == pytest.approx(expected, rel=1e-12)


def test_p95_is_numpys_linear_percentile_like_nsysan_stats():
    x = np.array([[1.0, 2.0, 3.0, 10.0, 50.0]])
    # Linear interpolation at rank 0.95 * 4 = 3.8 between 10 and 50.
    assert reducer("p95")(x)[0] == pytest.approx(10 + 0.8 * 40)
    with pytest.raises(ValueError):
        reducer("p101")
    with pytest.raises(ValueError):
        reducer("average")


def test_same_seed_same_interval_other_seed_other_interval():
    rng = np.random.default_rng(2)
    a, b = rng.normal(10, 2, 30), rng.normal(11, 2, 30)
    first = ratio_ci(a, b, seed=7, resamples=500)
    assert ratio_ci(a, b, seed=7, resamples=500) == first
    assert ratio_ci(a, b, seed=[7, 3], resamples=500) == ratio_ci(a, b, seed=[7, 3], resamples=500)
    assert ratio_ci(a, b, seed=8, resamples=500) != first
    assert ratio_ci(a, b, seed=7, resamples=500, block="auto") == ratio_ci(a, b, seed=7, resamples=500, block="auto")


def test_chunked_resampling_gives_the_same_values_as_one_chunk(monkeypatch):
    import nsysan.bootstrap as bootstrap

    sample = np.random.default_rng(3).normal(size=50)
    whole = bootstrap_statistic(sample, "mean", resamples=300, rng=np.random.default_rng(5))
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 120)  # two resamples per chunk
    chunked = bootstrap_statistic(sample, "mean", resamples=300, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(whole, chunked)


@pytest.mark.parametrize("block", [1, "auto"])
def test_coverage_of_the_ratio_of_means_on_normal_data(block):
    """Over many synthetic data sets with a known ratio of means (12 / 10), the 95 % interval holds it
    about 95 % of the time (binomial sd over 300 repetitions: 1.3 points)."""
    rng = np.random.default_rng(11)
    truth, hits, reps = 1.2, 0, 300
    for rep in range(reps):
        a, b = rng.normal(10, 2, 40), rng.normal(12, 2, 40)
        ci = ratio_ci(a, b, statistic="mean", resamples=800, seed=rep, block=block)
        hits += ci.ci_low <= truth <= ci.ci_high
    assert 0.89 <= hits / reps <= 0.99


def test_coverage_of_the_ratio_of_p95_on_normal_data():
    rng = np.random.default_rng(12)
    truth = (12 + Z95 * 2) / (10 + Z95 * 2)
    hits, reps = 0, 120
    for rep in range(reps):
        a, b = rng.normal(10, 2, 150), rng.normal(12, 2, 150)
        ci = ratio_ci(a, b, statistic="p95", resamples=500, seed=rep)
        hits += ci.ci_low <= truth <= ci.ci_high
    assert 0.85 <= hits / reps <= 1.0


def test_identical_constant_samples_give_a_point_interval_and_no_change():
    ci = ratio_ci([5.0] * 10, [5.0] * 10)
    assert (ci.estimate, ci.ci_low, ci.ci_high) == (1.0, 1.0, 1.0)
    assert verdict(ci.ci_low, ci.ci_high) == "no clear change"


def test_empty_or_zero_baseline_gives_nan():
    for ci in (ratio_ci([], [1.0, 2.0]), ratio_ci([1.0], []), ratio_ci([0.0, 0.0], [1.0, 2.0])):
        assert math.isnan(ci.estimate) and math.isnan(ci.ci_low) and math.isnan(ci.ci_high)
    with pytest.raises(ValueError):
        ratio_ci([1.0], [1.0], confidence=1.5)


def test_block_bootstrap_widens_the_interval_of_bursty_series():
    """A series whose slow values come in bursts: independent resampling breaks the bursts up and
    understates the spread of the mean; blocks keep them, so the interval is wider."""
    rng = np.random.default_rng(4)
    series = np.concatenate([np.full(10, 10.0), np.full(10, 20.0)] * 3) + rng.normal(0, 0.1, 60)
    iid = ratio_ci(series, series, resamples=3000, seed=1, block=1)
    blocks = ratio_ci(series, series, resamples=3000, seed=1, block=10)
    assert blocks.ci_high - blocks.ci_low > 1.5 * (iid.ci_high - iid.ci_low)


def test_block_length():
    assert block_length(27, "auto") == 3
    assert block_length(1000, "auto") == 10
    assert block_length(1, "auto") == 1
    assert block_length(5, 8) == 5
    for bad in (0, -2, "big", 1.5, True):
        with pytest.raises(ValueError):
            block_length(10, bad)


@pytest.mark.parametrize(("low", "high", "min_effect", "higher_is_better", "expected"), [
    (1.02, 1.10, 0.0, False, "slower"),
    (0.90, 0.98, 0.0, False, "faster"),
    (0.98, 1.02, 0.0, False, "no clear change"),
    (1.00, 1.10, 0.0, False, "no clear change"),  # touching 1 is not beyond it
    (1.02, 1.10, 0.05, False, "no clear change"),  # real but smaller than the minimum effect
    (1.06, 1.20, 0.05, False, "slower"),
    (0.90, 0.955, 0.05, False, "no clear change"),  # 1 / 1.05 = 0.952 is the faster threshold
    (0.90, 0.95, 0.05, False, "faster"),
    (0.60, 0.70, 0.0, True, "slower"),  # bandwidth fell
    (1.20, 1.30, 0.0, True, "faster"),
    (float("nan"), 1.3, 0.0, False, "no clear change"),
    (None, None, 0.0, False, "no clear change"),
])
def test_verdict(low, high, min_effect, higher_is_better, expected):
    assert verdict(low, high, min_effect=min_effect, higher_is_better=higher_is_better) == expected


def test_verdict_rejects_negative_minimum_effect():
    with pytest.raises(ValueError):
        verdict(1.1, 1.2, min_effect=-0.1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.5, 100.0), min_size=2, max_size=25),
       st.lists(st.floats(0.5, 100.0), min_size=2, max_size=25),
       st.floats(0.1, 10.0), st.sampled_from(["mean", "p95"]))
def test_scaling_one_sample_scales_estimate_and_interval(a, b, scale, statistic):
    """mean and p95 are scale-equivariant and the resampling depends only on the seed and the sizes, so
    multiplying the other sample by c multiplies the estimate and both bounds by c."""
    plain = ratio_ci(a, b, statistic=statistic, resamples=200, seed=3)
    scaled = ratio_ci(a, np.asarray(b) * scale, statistic=statistic, resamples=200, seed=3)
    assert scaled.estimate == pytest.approx(plain.estimate * scale, rel=1e-9)
    assert scaled.ci_low == pytest.approx(plain.ci_low * scale, rel=1e-9)
    assert scaled.ci_high == pytest.approx(plain.ci_high * scale, rel=1e-9)
    assert plain.ci_low <= plain.ci_high
