"""Seeded percentile bootstrap of a ratio between two independent samples, and the verdict drawn from it.

    est = ratio_ci(baseline_ms, other_ms, statistic="mean", seed=0)   # other / baseline
    verdict(est.ci_low, est.ci_high)                                   # "slower" | "faster" | "no clear change"

Both samples are resampled with replacement, independently, ``resamples`` times; the statistic of each
resample gives one ratio, and the CI is the central ``confidence`` share of those ratios (percentile
method). The estimate is the ratio of the statistic on the full samples. Everything is vectorised with
numpy and driven by one ``numpy.random.Generator``, so the same seed gives the same CI.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from nsysan.lazy import numpy as np

if TYPE_CHECKING:  # aliases for annotations only: evaluating them would import numpy (nsysan.lazy)
    Statistic = str | Callable[[np.ndarray], np.ndarray]
    Seed = int | Sequence[int] | np.random.Generator
Block = int | Literal["auto"]

#: Resampled values held in memory at once (rows × sample size); larger problems are done in chunks.
_CHUNK_ELEMENTS = 4_000_000
# Up to three digits: the range check below is the one rule for which percentiles exist (p0 to p100).
_PERCENTILE = re.compile(r"^p(\d{1,3}(?:\.\d+)?)$")

SLOWER, FASTER, NO_CHANGE = "slower", "faster", "no clear change"


@dataclass(frozen=True)
class RatioCI:
    """``estimate`` = statistic(other) / statistic(baseline); ``ci_low``..``ci_high`` its bootstrap CI."""

    estimate: float
    ci_low: float
    ci_high: float
    n_baseline: int
    n_other: int
    confidence: float
    resamples: int


def reducer(statistic: Statistic) -> Callable[[np.ndarray], np.ndarray]:
    """The function that reduces the last axis of an array to ``statistic``.

    Names: ``mean``, ``median``, ``pNN`` (percentile NN with linear interpolation, numpy's default, as
    :mod:`nsysan.stats` computes them), ``rate`` (1 / mean: events per unit of the values, e.g. batches per
    ns of batch time), and for samples of (value, weight) records ``weighted_mean`` (sum of value x weight /
    sum of weight). A callable must reduce the sample axis (``f(x) -> x.mean(axis=-1)``-like; for records
    it gets ``(..., n, k)`` arrays).
    """
    if callable(statistic):
        return statistic
    if statistic == "weighted_mean":
        return lambda x: (x[..., 0] * x[..., 1]).sum(axis=-1) / x[..., 1].sum(axis=-1)
    if statistic == "mean":
        return lambda x: x.mean(axis=-1)
    if statistic == "median":
        return lambda x: np.median(x, axis=-1)
    if statistic == "rate":
        return lambda x: 1.0 / x.mean(axis=-1)
    found = _PERCENTILE.match(statistic)
    if found and 0 <= float(found[1]) <= 100:
        q = float(found[1])
        return lambda x: np.percentile(x, q, axis=-1)
    raise ValueError(f"unknown statistic {statistic!r}: use mean, median, rate, pNN or a callable")


def block_length(n: int, block: Block) -> int:
    """The block length used for a sample of ``n``: ``block`` itself, or for ``"auto"`` round(n^(1/3))
    (the usual order for the block bootstrap of a dependent series), at least 1 and at most n."""
    if block == "auto":
        length = round(n ** (1 / 3)) if n else 1
    elif isinstance(block, int) and not isinstance(block, bool) and block >= 1:
        length = block
    else:
        raise ValueError(f"block must be a positive integer or 'auto', not {block!r}")
    return max(1, min(length, max(n, 1)))


def bootstrap_statistic(sample: np.ndarray, statistic: Statistic, *, resamples: int,
                        rng: np.random.Generator, block: Block = 1) -> np.ndarray:
    """``resamples`` values of ``statistic`` over resamples (with replacement) of ``sample``: a 1-D array of
    values, or a 2-D ``(n, k)`` array of records (e.g. value and weight) resampled whole.

    ``block`` = 1 resamples single values (the classic bootstrap, for independent values). A longer block
    is the circular block bootstrap for a series in time order: each resample strings together
    ceil(n / block) runs of ``block`` consecutive values (wrapping round the end), starting at random
    positions, cut to n — so bursts of slow instances stay together and widen the CI as they should.
    """
    values = np.asarray(sample, dtype=np.float64)
    n = values.shape[0] if values.ndim else 1
    length = block_length(n, block)
    blocks = -(-n // length)
    reduce = reducer(statistic)
    chunk = max(1, _CHUNK_ELEMENTS // max(blocks * length * max(values[:1].size, 1), 1))
    out = np.empty(resamples, dtype=np.float64)
    for first in range(0, resamples, chunk):
        rows = min(chunk, resamples - first)
        starts = rng.integers(0, n, size=(rows, blocks))
        if length == 1:
            index = starts
        else:
            index = ((starts[:, :, np.newaxis] + np.arange(length)) % n).reshape(rows, -1)[:, :n]
        out[first:first + rows] = reduce(values[index])
    return out


def ratio_ci(baseline: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray, *,
             statistic: Statistic = "mean", confidence: float = 0.95, resamples: int = 2000,
             seed: Seed = 0, block: Block = 1) -> RatioCI:
    """Ratio statistic(other) / statistic(baseline) with a percentile bootstrap CI.

    The two samples are independent (e.g. instances of a stage in two runs); each is resampled on its own,
    with blocks of ``block`` consecutive values (see :func:`bootstrap_statistic`; 1 = independent values).
    Samples are 1-D arrays of values or 2-D ``(n, k)`` arrays of records (for ``weighted_mean``).
    An empty sample, or a baseline statistic of 0, gives NaN throughout; resamples whose baseline statistic
    is 0 give infinite ratios, so a bound can be ``inf`` (an unbounded interval; :func:`verdict` calls no
    change on it); 0 / 0 resamples are dropped. ``seed`` is anything
    ``numpy.random.default_rng`` accepts (an int, a sequence of ints, or a Generator).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, not {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    a, b = _sample(baseline), _sample(other)
    na, nb = a.shape[0], b.shape[0]
    nan = math.nan
    if na == 0 or nb == 0:
        return RatioCI(nan, nan, nan, na, nb, confidence, resamples)
    reduce = reducer(statistic)
    denominator = float(reduce(a[np.newaxis, :])[0])
    if denominator == 0 or not math.isfinite(denominator):
        return RatioCI(nan, nan, nan, na, nb, confidence, resamples)
    estimate = float(reduce(b[np.newaxis, :])[0]) / denominator
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    stat_a = bootstrap_statistic(a, reduce, resamples=resamples, rng=rng, block=block)
    stat_b = bootstrap_statistic(b, reduce, resamples=resamples, rng=rng, block=block)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = stat_b / stat_a
    ratios = ratios[~np.isnan(ratios)]
    if ratios.size == 0:
        return RatioCI(estimate, nan, nan, na, nb, confidence, resamples)
    tail = (1 - confidence) / 2
    low, high = (_quantile(ratios, q) for q in (tail, 1 - tail))
    return RatioCI(estimate, low, high, na, nb, confidence, resamples)


def _quantile(values: np.ndarray, q: float) -> float:
    """numpy's linear quantile, but infinite where it lies between order statistics of which one is infinite.

    A resample whose baseline statistic is 0 gives an infinite ratio; numpy interpolates inf - inf (or
    inf x 0) to NaN, which would read as "no CI" where the truth is an interval without an upper bound."""
    below, above = (float(np.quantile(values, q, method=m)) for m in ("lower", "higher"))
    if below == above:
        return below
    if below == -math.inf and above == math.inf:
        return math.nan
    if below == -math.inf or above == math.inf:
        return below if below == -math.inf else above
    return float(np.quantile(values, q))


def _sample(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim > 2:
        raise ValueError(f"a sample must be 1-D (values) or 2-D (records), not {array.ndim}-D")
    return array.ravel() if array.ndim < 2 else array


def verdict(ci_low: float | None, ci_high: float | None, *, min_effect: float = 0.0,
            higher_is_better: bool = False) -> str:
    """Turn the CI of a ratio (other / baseline) into ``slower``, ``faster`` or ``no clear change``.

    A change is called only when the whole CI lies beyond 1 by at least ``min_effect`` (a fraction: 0.05
    asks for a change of at least 5 %): above ``1 + min_effect`` or below ``1 / (1 + min_effect)`` (the
    same distance on a log scale, so a time ratio and the matching rate ratio get the same verdict).
    For times a ratio above 1 is slower; pass ``higher_is_better=True`` for bandwidth and throughput.
    A missing, NaN or infinite bound gives ``no clear change``.
    """
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, not {min_effect}")
    # An infinite bound comes from resamples whose baseline statistic is 0: the ratio has no scale there, so
    # the interval bounds no change, even when its other end lies beyond 1.
    if ci_low is None or ci_high is None or not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return NO_CHANGE
    if ci_low > 1 + min_effect:
        return FASTER if higher_is_better else SLOWER
    if ci_high < 1 / (1 + min_effect):
        return SLOWER if higher_is_better else FASTER
    return NO_CHANGE
