"""NUMA penalty: how much slower a stage runs when the process sits on a NUMA node remote from its GPU.

Runs are paired when they share every metadata key except the NUMA node (model, GPU, variant and any
sidecar field; ``ignore`` leaves keys out). In each pair group the *local* node is the GPU's NUMA affinity
recorded by the runner in the run metadata (sidecar key ``gpu_numa_node``); without it the lowest node
of the group is assumed local and ``local_basis`` says so. Every other node of the group is *remote*.
Per stage and metric (those of :mod:`nsysan.analyses.compare`): penalty = remote / local - 1, with a
seeded bootstrap CI over instances. Instances of several runs on the same node are pooled.

A collection with a single NUMA node has nothing to pair: :func:`numa_penalty` raises
:class:`NumaNotComparable` with a plain sentence saying so, instead of returning an empty table.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from nsysan.analyses.compare import METRICS, Settings, compare_pairs, tag_columns
from nsysan.errors import NsysanError
from nsysan.metadata import MEASURED_KEYS

LOCAL_KEY = "gpu_numa_node"
NUMA_KEY = "numa"
ASSUMED_LOWEST = f"assumed: lowest NUMA node of the group is local (no {LOCAL_KEY} in the run metadata)"


class NumaNotComparable(NsysanError):
    """The runs hold nothing to compare across NUMA nodes (a single node, or no pair of runs)."""


def numa_pairs(samples: pl.DataFrame, *, numa_key: str = NUMA_KEY, local_key: str = LOCAL_KEY,
               ignore: Sequence[str] = ()) -> pl.DataFrame:
    """How each report takes part: one row per report with the pair keys, ``report``, ``numa``,
    ``local_numa``, ``local_basis`` (where the local node comes from), ``role`` (``local``, ``remote`` or
    ``unpaired``) and ``note`` (why a report is unpaired)."""
    keys = pair_keys(samples, numa_key=numa_key, local_key=local_key, ignore=ignore)
    columns = [*keys, "report", numa_key] + ([local_key] if local_key in samples.columns else [])
    runs = samples.select(columns).unique(subset="report", maintain_order=True)
    rows = []
    for group_values, members in runs.group_by(keys, maintain_order=True) if keys else [((), runs)]:
        group = dict(zip(keys, group_values))
        local, basis, note = _local_node(members, numa_key=numa_key, local_key=local_key)
        nodes = {n for n in members[numa_key].to_list() if n is not None}
        remotes = {n for n in nodes if local is None or str(n) != str(local)}
        for report, node in members.select("report", numa_key).iter_rows():
            if node is None:
                role, why = "unpaired", f"no NUMA node in the metadata (report name or sidecar '{numa_key}')"
            elif note is not None:
                role, why = "unpaired", note
            elif not remotes:
                role, why = "unpaired", f"every run of this group is on NUMA node {local}"
            else:
                role, why = ("local", None) if str(node) == str(local) else ("remote", None)
            rows.append({**group, "report": report, numa_key: node, "local_numa": local, "local_basis": basis,
                         "role": role, "note": why})
    schema = {**{k: samples.schema[k] for k in keys}, "report": pl.String, numa_key: samples.schema[numa_key],
              "local_numa": samples.schema[numa_key], "local_basis": pl.String, "role": pl.String,
              "note": pl.String}
    return pl.DataFrame(rows, schema=schema, strict=False)


def _local_node(members: pl.DataFrame, *, numa_key: str, local_key: str) -> tuple[Any, str | None, str | None]:
    """(local node, basis, note when the group cannot be paired) for the runs of one pair group."""
    nodes = sorted({n for n in members[numa_key].to_list() if n is not None}, key=_node_order)
    recorded = ({v for v in members[local_key].to_list() if v is not None}
                if local_key in members.columns else set())
    if len(recorded) > 1:
        shown = ", ".join(sorted(map(str, recorded)))
        return None, None, f"runs of this group disagree on {local_key} ({shown})"
    if recorded:
        value = next(iter(recorded))
        local = next((n for n in nodes if str(n) == str(value)), None)
        if local is None:
            return value, f"{local_key} from the run metadata", f"no run on the GPU's local NUMA node {value}"
        return local, f"{local_key} from the run metadata", None
    if not nodes:
        return None, None, None
    return nodes[0], ASSUMED_LOWEST, None


def pair_keys(samples: pl.DataFrame, *, numa_key: str = NUMA_KEY, local_key: str = LOCAL_KEY,
              ignore: Sequence[str] = ()) -> list[str]:
    """The metadata keys runs must share to be paired: every tag but ``report``, the NUMA node, the local
    node, measured outcomes (:data:`nsysan.metadata.MEASURED_KEYS`) and ``ignore``."""
    if numa_key not in samples.columns:
        raise NumaNotComparable(
            f"no NUMA node in the run metadata (report names pipeline_gpu{{G}}_numa{{N}}_... or a sidecar "
            f"'{numa_key}' field), so there is no NUMA penalty to report")
    unknown = [k for k in ignore if k not in samples.columns]
    if unknown:
        raise NsysanError(f"unknown key(s) to ignore: {', '.join(unknown)}; keys here: "
                          f"{', '.join(tag_columns(samples))}")
    skip = {"report", numa_key, local_key, *MEASURED_KEYS, *ignore}
    return [k for k in tag_columns(samples) if k not in skip]


def numa_penalty(samples: pl.DataFrame, *, numa_key: str = NUMA_KEY, local_key: str = LOCAL_KEY,
                 ignore: Sequence[str] = (), settings: Settings = Settings()) -> pl.DataFrame:
    """Penalty of every remote NUMA node against the local one, per pair group, stage and metric.

    ``samples`` are tagged :func:`nsysan.analyses.compare.stage_observations` rows. Columns: the pair keys,
    ``local_numa``, ``remote_numa``, ``local_basis``, ``stage``, ``direction``, ``metric``, ``statistic``,
    ``n_local``, ``n_remote``, ``local_value``, ``remote_value``, ``ratio`` (remote / local),
    ``penalty_pct`` = 100 (ratio - 1), ``ci_low_pct``/``ci_high_pct`` (bootstrap CI of the penalty at
    ``ci_level``), ``ci_level`` and ``verdict`` (``slower`` = the remote node is slower; for bandwidth and
    throughput a negative penalty is the slow-down). ``settings`` as in
    :func:`nsysan.analyses.compare.compare_groups`.

    Rows are sorted so that the most NUMA-sensitive pair group comes first: by ``sensitivity_pct``, the
    mean penalty of the mean range time over the group's stages; then in pipeline order.
    Raises :class:`NumaNotComparable` when there is a single NUMA node or no pair.
    """
    layout = numa_pairs(samples, numa_key=numa_key, local_key=local_key, ignore=ignore)
    keys = pair_keys(samples, numa_key=numa_key, local_key=local_key, ignore=ignore)
    nodes = sorted({n for n in layout[numa_key].to_list() if n is not None}, key=_node_order)
    if len(nodes) <= 1:
        where = f"NUMA node {nodes[0]}" if nodes else "no known NUMA node"
        raise NumaNotComparable(
            f"only one NUMA node: all {layout.height} report(s) ran on {where}, so there is no remote-node run "
            "to compare with and no NUMA penalty to report")
    paired = layout.filter(pl.col("role") != "unpaired")
    if paired.is_empty():
        notes = "; ".join(sorted(set(layout["note"].drop_nulls().to_list())))
        raise NumaNotComparable(
            f"no pair of runs differs only in NUMA node (pairs must share {', '.join(keys) or 'all keys'}): "
            f"{notes}")
    groups = paired.select(*keys, "local_numa", "local_basis").unique(maintain_order=True)
    pairs = []
    for row in groups.iter_rows(named=True):
        group = tuple(row[k] for k in keys)
        members = paired.filter(*[pl.col(k).eq_missing(row[k]) for k in keys]) if keys else paired
        remotes = {n for n in members[numa_key].to_list() if str(n) != str(row["local_numa"])}
        for remote in sorted(remotes, key=_node_order):
            pairs.append(((*group, remote), (*group, row["local_numa"]), f"{numa_key}={row['local_numa']}"))
    data = samples.filter(pl.col("report").is_in(paired["report"].to_list()))
    result = compare_pairs(data, keys=[*keys, numa_key], pairs=pairs, settings=settings)
    result = result.with_columns(_row=pl.int_range(pl.len()))
    if keys:
        result = result.join(groups, on=keys, how="left", nulls_equal=True, maintain_order="left")
    else:
        result = result.with_columns(local_numa=pl.lit(groups["local_numa"][0]),
                                     local_basis=pl.lit(groups["local_basis"][0]))
    result = result.select(
        *keys, "local_numa", pl.col(numa_key).alias("remote_numa"), "local_basis", "stage", "direction", "metric",
        "statistic", pl.col("baseline_n").alias("n_local"), pl.col("n").alias("n_remote"),
        pl.col("baseline_value").alias("local_value"), pl.col("value").alias("remote_value"), "ratio",
        pl.col("change_pct").alias("penalty_pct"), "ci_low_pct", "ci_high_pct", "ci_level", "verdict", "_row")
    score = (pl.col("penalty_pct").filter((pl.col("metric") == "range_ms") & (pl.col("statistic") == "mean"))
             .mean().over([*keys, "remote_numa"]))
    return (result.with_columns(sensitivity_pct=score, _group=pl.col("_row").min().over([*keys, "remote_numa"]))
            .sort("sensitivity_pct", "_group", "_row", descending=[True, False, False], nulls_last=True)
            .drop("_row", "_group"))


def numa_heatmap(penalty: pl.DataFrame, *, metric: str = "range_ms", statistic: str = "mean",
                 direction: str | None = None) -> pl.DataFrame:
    """A heatmap-ready frame: one row per pair group and remote node (model × ...), one column per stage
    holding ``penalty_pct`` of ``metric``/``statistic`` (bandwidth columns are ``stage (direction)``; give
    ``direction`` to keep one), plus ``mean_penalty_pct`` over the stage columns. Rows are sorted most
    NUMA-sensitive first: highest ``mean_penalty_pct`` for times, lowest (most negative) for bandwidth and
    throughput, where remote is worse when lower."""
    chosen = penalty.filter((pl.col("metric") == metric) & (pl.col("statistic") == statistic))
    if direction is not None:
        chosen = chosen.filter(pl.col("direction") == direction)
    if chosen.is_empty():
        available = sorted(set(penalty.select(pl.format("{}/{}", "metric", "statistic")).to_series().to_list()))
        raise NsysanError(f"no {metric}/{statistic} penalties here; choose from {', '.join(available)}")
    first = penalty.columns.index("local_numa")
    index = [*penalty.columns[:first], "local_numa", "remote_numa"]
    label = (pl.when(pl.col("direction").is_null()).then(pl.col("stage"))
             .otherwise(pl.format("{} ({})", "stage", "direction")))
    chosen = chosen.with_columns(_column=label, _order=pl.int_range(pl.len()))
    order = chosen.group_by("_column").agg(pl.col("_order").min()).sort("_order")["_column"].to_list()
    wide = chosen.pivot(on="_column", index=index, values="penalty_pct", aggregate_function="first")
    wide = wide.with_columns(mean_penalty_pct=pl.mean_horizontal(order))
    lower_is_worse = any(m.higher_is_better for m in METRICS if m.name == metric)
    return (wide.select(*index, "mean_penalty_pct", *order)
            .sort("mean_penalty_pct", descending=not lower_is_worse, nulls_last=True))


def _node_order(node: Any) -> tuple[int, Any]:
    try:
        return 0, int(node)
    except (TypeError, ValueError):
        return 1, str(node)


__all__ = ["ASSUMED_LOWEST", "LOCAL_KEY", "NUMA_KEY", "NumaNotComparable", "numa_heatmap", "numa_pairs",
           "numa_penalty", "pair_keys"]
