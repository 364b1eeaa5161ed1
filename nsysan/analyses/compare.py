"""N-way comparison of per-stage metrics between groups of runs, with bootstrap CIs and a verdict.

Two steps:

* :func:`stage_observations` turns one report into a long frame of observations (one row per range instance
  and metric, one per copy for bandwidth), for the instances the selection keeps; over many reports they are
  tagged with ``report`` and the run metadata (:func:`nsysan.compare`);
* :func:`compare` groups the observations by metadata keys and sets every group against its baseline
  group: per stage and metric the value in each group, the ratio to the baseline, a percentile bootstrap
  CI of the ratio over instances (:mod:`nsysan.bootstrap`) and a verdict that calls a change only when the
  CI excludes 1.

Metrics (docs/metrics.md, "Comparisons"): ``range_ms``, ``gpu_proj_ms`` and ``gpu_busy_ms`` (mean and p95),
``bandwidth_gbps`` per copy direction (bytes / copy time of the copies a stage launched, as
``nsysan bandwidth`` counts it) and ``throughput_per_s`` (instances per second of a level-0 stage over the
window from its first start to its last end, as ``nsysan throughput`` counts batches).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from nsysan.analyses.bandwidth import copy_trace
from nsysan.analyses.latency import instances
from nsysan.bootstrap import NO_CHANGE, ratio_ci, reducer, verdict
from nsysan.defaults import CONFIDENCE, MIN_EFFECT_PCT, MIN_INSTANCES, RESAMPLES, SEED
from nsysan.errors import NsysanError
from nsysan.lazy import numpy as np
from nsysan.load import Report, derived
from nsysan.selection import DEFAULT, Selection, pool_names

#: Columns of :func:`stage_observations` (the rest of a tagged frame is ``report`` and metadata keys).
SAMPLE_COLUMNS = ("stage", "direction", "level", "metric", "pid", "rank", "device_id", "start_ns", "value", "weight")
#: Columns of :func:`stage_observations` besides ``report`` and run metadata that comparisons can be grouped by.
ROW_KEYS = ("pid",)
BASELINE, NO_BASELINE, TOO_FEW = "baseline", "no baseline", "too few instances"
NS_PER_MS, NS_PER_S = 1e6, 1e9


@dataclass(frozen=True)
class Metric:
    """One compared quantity: ``statistic`` of the ``source`` observations, times ``scale``."""

    name: str                 # output name, unit included
    statistic: str            # label in the output
    source: str               # metric of the observations in stage_observations
    reduce: str | Callable[[np.ndarray], np.ndarray]
    scale: float = 1.0
    higher_is_better: bool = False
    top_level_only: bool = False


def _per_second(ns: np.ndarray) -> np.ndarray:
    return NS_PER_S / ns.mean(axis=-1)


METRICS: tuple[Metric, ...] = (
    Metric("range_ms", "mean", "range_ns", "mean", 1 / NS_PER_MS),
    Metric("range_ms", "p95", "range_ns", "p95", 1 / NS_PER_MS),
    Metric("gpu_proj_ms", "mean", "gpu_proj_ns", "mean", 1 / NS_PER_MS),
    Metric("gpu_proj_ms", "p95", "gpu_proj_ns", "p95", 1 / NS_PER_MS),
    Metric("gpu_busy_ms", "mean", "gpu_busy_ns", "mean", 1 / NS_PER_MS),
    Metric("gpu_busy_ms", "p95", "gpu_busy_ns", "p95", 1 / NS_PER_MS),
    # Copy-time-weighted mean of per-copy rates = total bytes / total copy time.
    Metric("bandwidth_gbps", "mean", "bandwidth_gbps", "weighted_mean", higher_is_better=True),
    # 1 / mean cycle = instances / (last end - first start).
    Metric("throughput_per_s", "mean", "cycle_ns", _per_second, higher_is_better=True, top_level_only=True),
)
#: Observations that carry a weight (resampled as (value, weight) records).
WEIGHTED = frozenset({"bandwidth_gbps"})

COMPARE_COLUMNS = ("stage", "direction", "metric", "statistic", "n", "value", "baseline", "baseline_n",
                   "baseline_value", "ratio", "ci_low", "ci_high", "ci_level", "change_pct", "ci_low_pct",
                   "ci_high_pct", "verdict")


# -- observations -----------------------------------------------------------------------------------------
@derived  # compare and numa of one report read the same observations
def stage_observations(report: Report, *, select: Selection = DEFAULT) -> pl.DataFrame:
    """Observations per stage of one report, one row each (the many-report form is tagged with ``report``
    and run metadata by :func:`nsysan.compare`).

    Columns: ``stage`` (range name, numbered names pooled as ``batch_*`` when ``select.merge_numbered``),
    ``direction`` (copy direction for bandwidth, else null), ``level`` (nesting level of the stage),
    ``metric``, ``pid``, ``start_ns`` (the instance's start), ``value`` (Float64) and ``weight`` (null but for
    bandwidth). Metrics: ``range_ns`` (every instance); ``gpu_proj_ns``, ``gpu_busy_ns`` (instances with
    GPU ops); ``cycle_ns`` (level-0 stages: start of the process's next instance of the stage - own start,
    the last one its own range time, so that their sum is the window first start -> last end);
    ``bandwidth_gbps``: per memcpy, bytes / duration with the duration as weight, for the copies whose
    innermost enclosing range (:func:`nsysan.attribution.op_stages`) is an instance kept here.
    Only instances that ``select`` keeps are observed.
    """
    ranges = pool_names(instances(report, select=select), select)
    instance = [pl.col("range").alias("stage"), pl.lit(None, pl.String).alias("direction"),
                pl.col("level").cast(pl.Int64), "pid", "start_ns"]
    unweighted = pl.lit(None, pl.Float64).alias("weight")
    has_gpu = pl.col("gpu_ops") > 0
    following = pl.col("start_ns").shift(-1).over(["pid", "range", "style"], order_by="start_ns")
    frames = [
        ranges.select(*instance, pl.lit("range_ns").alias("metric"),
                      pl.col("range_ns").cast(pl.Float64).alias("value"), unweighted),
        ranges.filter(has_gpu).select(*instance, pl.lit("gpu_proj_ns").alias("metric"),
                                      pl.col("gpu_proj_ns").cast(pl.Float64).alias("value"), unweighted),
        ranges.filter(has_gpu).select(*instance, pl.lit("gpu_busy_ns").alias("metric"),
                                      pl.col("gpu_busy_ns").cast(pl.Float64).alias("value"), unweighted),
        ranges.with_columns(_next=following).filter(pl.col("level") == 0).select(
            *instance, pl.lit("cycle_ns").alias("metric"),
            pl.coalesce(pl.col("_next") - pl.col("start_ns"), pl.col("range_ns")).cast(pl.Float64).alias("value"),
            unweighted),
    ]
    if report.has("CUPTI_ACTIVITY_KIND_MEMCPY") and report.has("CUPTI_ACTIVITY_KIND_RUNTIME"):
        copies = (copy_trace(report, include_memset=False, by_stage=True, select=select)
                  .filter(pl.col("stage_range_id").is_not_null() & (pl.col("duration_ns") > 0))
                  .join(ranges.select("range_id", "range", "level", "pid", "start_ns"),
                        left_on="stage_range_id", right_on="range_id", how="inner", suffix="_stage"))
        frames.append(copies.select(
            pl.col("range").alias("stage"), "direction", pl.col("level").cast(pl.Int64), "pid",
            pl.col("start_ns_stage").alias("start_ns"), pl.lit("bandwidth_gbps").alias("metric"),
            (pl.col("bytes") / pl.col("duration_ns")).cast(pl.Float64).alias("value"),
            pl.col("duration_ns").cast(pl.Float64).alias("weight")))
    return pl.concat(frames, how="vertical_relaxed")


# -- comparison --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """How ratios are estimated and judged (see :func:`compare` for the meaning of each)."""

    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED
    block: int | Literal["auto"] = "auto"
    adjust: Literal["bonferroni", "none"] = "bonferroni"
    min_effect_pct: float = MIN_EFFECT_PCT
    min_instances: int = MIN_INSTANCES

    def __post_init__(self) -> None:
        if self.adjust not in ("bonferroni", "none"):
            raise NsysanError(f"adjust must be 'bonferroni' or 'none', not {self.adjust!r}")
        if not 0 < self.confidence < 1:
            raise NsysanError(f"confidence must lie between 0 and 1, not {self.confidence}")
        if self.min_effect_pct < 0:
            raise NsysanError(f"the minimum effect must be >= 0 %, not {self.min_effect_pct}")


def compare_groups(samples: pl.DataFrame, *, by: Sequence[str] = ("report",),
                   baseline: Mapping[str, Any] | None = None, settings: Settings = Settings()) -> pl.DataFrame:
    """Each group of ``by`` against its baseline group, per stage and metric, from :func:`stage_observations`
    rows tagged with ``report`` and run metadata.

    ``baseline`` names values of some ``by`` keys (``{"numa": 0}``): a group's baseline is the group with
    those values and the group's own values for the other keys (so ``by=("model", "numa")``,
    ``baseline={"numa": 0}`` compares every model on each node with the same model on node 0). String
    values match numbers by their text; ``""`` or ``"none"`` match a missing value. Without ``baseline``
    the first group (in the order of the samples) is everyone's baseline.

    Columns: the ``by`` keys, then :data:`COMPARE_COLUMNS`: ``n`` (observations), ``value`` (the statistic;
    unit in the metric name), ``baseline`` (the baseline group, e.g. ``numa=0``), ``baseline_n``,
    ``baseline_value``, ``ratio`` (value / baseline value), ``ci_low``/``ci_high`` (percentile bootstrap CI
    of the ratio over instances, seeded), ``ci_level`` (the confidence of that interval),
    ``change_pct`` = 100 (ratio - 1) with ``ci_low_pct``/``ci_high_pct``, and ``verdict``.

    Noise control (docs/metrics.md, "Comparisons"): instances are resampled in blocks of ``block``
    consecutive instances (``"auto"``: n^(1/3)), because slow batches come in bursts; with
    ``adjust="bonferroni"`` the intervals of one group-vs-baseline comparison hold together at
    ``confidence`` (each at 1 - (1 - confidence) / rows); the verdict is ``slower``/``faster`` only when the
    interval lies wholly beyond a change of ``min_effect_pct`` (same distance on a log scale both ways),
    (all of these are fields of ``settings``),
    else ``no clear change``. Other verdicts: ``baseline`` (the baseline group's own rows), ``no baseline``
    (no baseline group, or it lacks the stage), ``too few instances`` (fewer than ``min_instances`` on a
    side; no CI).
    """
    by = list(by)
    _require(samples, by)
    groups = samples.select(by).unique(maintain_order=True).rows()
    if baseline is None:
        shown = list(by)
        base_of = {g: groups[0] for g in groups}
    else:
        unknown = [k for k in baseline if k not in by]
        if unknown:
            raise NsysanError(f"baseline key(s) {', '.join(unknown)} must be among the grouping keys "
                              f"({', '.join(by)})")
        for key, wanted in baseline.items():
            values = samples[key].unique().to_list()
            if not any(_matches(v, wanted) for v in values):
                listed = ", ".join(sorted(_text(v) for v in values))
                raise NsysanError(f"no run has {key}={wanted}; {key} here: {listed}")
        shown = [k for k in by if k in baseline]
        base_of = {g: _baseline_group(g, by, baseline, groups) for g in groups}
    pairs = []
    for group in groups:
        base = base_of[group]
        label = (", ".join(f"{k}={_text(base[by.index(k)])}" for k in shown) if base is not None
                 else ", ".join(f"{k}={_text(v)}" for k, v in (baseline or {}).items()))
        pairs.append((group, base, label))
    return compare_pairs(samples, keys=by, pairs=pairs, settings=settings)


def compare_pairs(samples: pl.DataFrame, *, keys: Sequence[str], pairs: Sequence[tuple[tuple, tuple | None, str]],
                  settings: Settings = Settings()) -> pl.DataFrame:
    """The engine of :func:`compare`: ``pairs`` holds (group, its baseline group or None, baseline label),
    groups being tuples of values of ``keys``. One row per group, stage, direction and metric."""
    keys = list(keys)
    parts = {k: frame.select("value", "weight").to_numpy() if k[-1] in WEIGHTED else frame["value"].to_numpy()
             for k, frame in samples.partition_by([*keys, "stage", "direction", "metric"], as_dict=True,
                                                  maintain_order=True).items()}
    rows, jobs = [], []
    for stage, direction, level in stage_order(samples):
        for metric in METRICS:
            if metric.top_level_only and level != 0:
                continue
            for group, base, label in pairs:
                values = parts.get((*group, stage, direction, metric.source))
                if values is None:
                    continue
                row = dict(zip(keys, group), stage=stage, direction=direction, metric=metric.name,
                           statistic=metric.statistic, n=len(values), value=_value(values, metric), baseline=label)
                base_values = parts.get((*base, stage, direction, metric.source)) if base is not None else None
                if base_values is None:
                    row.update(verdict=NO_BASELINE)
                elif base == group:
                    row.update(baseline_n=len(values), baseline_value=row["value"], ratio=1.0, change_pct=0.0,
                               verdict=BASELINE)
                else:
                    row.update(baseline_n=len(base_values), baseline_value=_value(base_values, metric))
                    if min(len(values), len(base_values)) < settings.min_instances:
                        ratio = row["value"] / row["baseline_value"] if row["baseline_value"] else None
                        row.update(ratio=ratio, change_pct=None if ratio is None else 100 * (ratio - 1),
                                   verdict=TOO_FEW)
                    else:
                        jobs.append((row, base_values, values, metric, (group, base)))
                rows.append(row)
    family = {}
    for *_, pair in jobs:
        family[pair] = family.get(pair, 0) + 1
    for row, base_values, values, metric, pair in jobs:
        level_ = settings.confidence
        if settings.adjust == "bonferroni":
            level_ = 1 - (1 - settings.confidence) / family[pair]
        row.update(_ratio(base_values, values, metric, level_, settings,
                          identity=(pair, row["stage"], row["direction"], metric.name, metric.statistic)))
    schema = {**{k: samples.schema[k] for k in keys}, "stage": pl.String, "direction": pl.String,
              "metric": pl.String, "statistic": pl.String, "n": pl.Int64, "value": pl.Float64,
              "baseline": pl.String, "baseline_n": pl.Int64, "baseline_value": pl.Float64, "ratio": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "ci_level": pl.Float64, "change_pct": pl.Float64,
              "ci_low_pct": pl.Float64, "ci_high_pct": pl.Float64, "verdict": pl.String}
    return pl.DataFrame(rows, schema=schema).fill_nan(None)


def _ratio(base_values: np.ndarray, values: np.ndarray, metric: Metric, level: float, settings: Settings, *,
           identity: tuple) -> dict[str, Any]:
    # Enough resamples that each tail of the interval holds at least 10 of them.
    resamples = max(settings.resamples, math.ceil(10 / ((1 - level) / 2)))
    # One generator per row, seeded by the row's identity: a row's CI does not depend on the other rows.
    row_seed = [settings.seed, zlib.crc32(repr(identity).encode())]
    ci = ratio_ci(base_values, values, statistic=metric.reduce, confidence=level, resamples=resamples,
                  seed=row_seed, block=settings.block)
    return dict(ratio=ci.estimate, ci_low=ci.ci_low, ci_high=ci.ci_high, ci_level=level,
                change_pct=100 * (ci.estimate - 1), ci_low_pct=100 * (ci.ci_low - 1),
                ci_high_pct=100 * (ci.ci_high - 1),
                verdict=verdict(ci.ci_low, ci.ci_high, min_effect=settings.min_effect_pct / 100,
                                higher_is_better=metric.higher_is_better))


def _value(values: np.ndarray, metric: Metric) -> float:
    return float(reducer(metric.reduce)(values[np.newaxis, :])[0]) * metric.scale


def stage_order(samples: pl.DataFrame) -> list[tuple[str, str | None, int]]:
    """(stage, direction, level) in pipeline order: by first start within a report, outer before inner."""
    if samples.is_empty():
        return []
    origin = pl.col("start_ns").min().over("report") if "report" in samples.columns else pl.col("start_ns").min()
    ordered = (samples.with_columns(_offset=pl.col("start_ns") - origin)
               .group_by("stage", "direction")
               .agg(pl.col("_offset").min(), pl.col("level").min())
               .sort("_offset", "level", "stage", pl.col("direction").fill_null(""), nulls_last=False))
    return ordered.select("stage", "direction", "level").rows()


def tag_columns(samples: pl.DataFrame) -> list[str]:
    """The run tags of tagged :func:`stage_observations` rows: every column that is not an observation column."""
    return [c for c in samples.columns if c not in SAMPLE_COLUMNS]


def _require(samples: pl.DataFrame, keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in samples.columns]
    if missing:
        raise NsysanError(f"unknown grouping key(s) {', '.join(missing)}; keys here: "
                          f"{', '.join(tag_columns(samples))}")


def _matches(value: Any, wanted: Any) -> bool:
    if value is None:
        return wanted is None or (isinstance(wanted, str) and wanted.strip().lower() in ("", "none", "null"))
    if wanted is None:
        return False
    return value == wanted or str(value).lower() == str(wanted).strip().lower()


def _text(value: Any) -> str:
    return "none" if value is None else str(value)


def _baseline_group(group: tuple, by: list[str], baseline: Mapping[str, Any], groups: list[tuple]) -> tuple | None:
    for candidate in groups:
        if all(_matches(candidate[i], baseline[k]) if k in baseline else candidate[i] == group[i]
               for i, k in enumerate(by)):
            return candidate
    return None


__all__ = ["BASELINE", "COMPARE_COLUMNS", "METRICS", "Metric", "NO_BASELINE", "NO_CHANGE", "SAMPLE_COLUMNS", "Settings",
           "TOO_FEW", "compare_groups", "compare_pairs", "stage_observations", "stage_order", "tag_columns"]
