"""Findings that set runs against each other: each group against its baseline, the NUMA penalty of remote
placement, and the ranks of a distributed run (exposed communication, the straggler). Pure functions of the analysis
frames, as those of :mod:`~nsysan.report.findings`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from nsysan.report.model import Finding
from nsysan.report.words import (
    DIRECTION_WORDS,
    group_name,
    listing,
    matching,
    num,
    pct,
    row_dicts,
    times,
)

METRIC_WORDS = {"range_ms": "time", "gpu_proj_ms": "GPU time", "gpu_busy_ms": "GPU busy time",
                "bandwidth_gbps": "bandwidth", "throughput_per_s": "throughput"}


# -- comparisons ------------------------------------------------------------------------------------------------
_CALLED = ("slower", "faster")


def comparison_findings(comparison: pl.DataFrame, keys: Sequence[str], *, batch: str | None = None,
                        figure: str | None = None, table: str | None = None, limit: int = 3) -> list[Finding]:
    """Per compared group: the changes the verdicts call (largest first, at most ``limit``), each with its CI,
    and what happened to the whole batch (``batch`` range time and throughput), called or not."""
    needed = {"stage", "metric", "statistic", "change_pct", "ci_low_pct", "ci_high_pct", "verdict", "baseline"}
    if comparison.is_empty() or not needed <= set(comparison.columns):
        return []
    rows = comparison.filter(pl.col("statistic") == "mean", ~pl.col("verdict").is_in(["baseline", "no baseline"]),
                             pl.col("change_pct").is_not_null())
    out = []
    for group in row_dicts(rows.select(keys).unique(maintain_order=True)):
        part = matching(rows, group, keys)
        base = part["baseline"][0]
        called = part.filter(pl.col("verdict").is_in(_CALLED), pl.col("stage") != batch).sort(
            pl.col("change_pct").abs(), descending=True).head(limit)
        phrases = [f"{_what(r)} {_change(r)} ({r['verdict']})" for r in row_dicts(called)]
        whole = part.filter(pl.col("stage") == batch, pl.col("metric").is_in(["range_ms", "throughput_per_s"])) \
            if batch else part.head(0)
        batch_words = [f"{_what({**r, 'batch': True})} {_change(r)}: {r['verdict']}" for r in row_dicts(whole)]
        if not phrases and not batch_words:
            continue
        text = f"{group_name(group, keys)} against {base}: "
        text += "; ".join(phrases) if phrases else "no stage changes beyond the minimum effect"
        if batch_words:
            text += ". Whole batch: " + "; ".join(batch_words)
        level = "warn" if any(_worse(r) for r in row_dicts(called)) else "good" if phrases else "info"
        out.append(Finding(text + ".", figure=figure, table=table, level=level, section="compare"))
    return out


def _what(row: dict[str, Any]) -> str:
    words = METRIC_WORDS.get(row["metric"], row["metric"])
    direction = f" {DIRECTION_WORDS.get(row.get('direction'), row.get('direction'))}" if row.get("direction") else ""
    stage = "batch" if row.get("batch") else row["stage"]
    if row["metric"] == "range_ms":
        words = "time" if row.get("batch") else "CPU time"
    return f"{stage}{direction} {words}" if row["metric"] != "throughput_per_s" else "throughput"


def _change(row: dict[str, Any]) -> str:
    return f"{pct(row['change_pct'], signed=True)} (CI {pct(row['ci_low_pct'], True)} … {pct(row['ci_high_pct'], True)})"


def _worse(row: dict[str, Any]) -> bool:
    return row["verdict"] == "slower"


# -- NUMA -------------------------------------------------------------------------------------------------------
def numa_findings(penalty: pl.DataFrame, notes: Sequence[str] = (), *, figure: str | None = None,
                  table: str | None = None) -> list[Finding]:
    """The NUMA penalty: the most NUMA-sensitive pair group and its largest called penalty with its CI, and
    how sensitivity ranks the models; without a penalty frame, why not (the analysis's own sentence)."""
    kw = {"figure": figure, "table": table, "section": "numa"}
    if penalty.is_empty() or "penalty_pct" not in penalty.columns:
        reason = next((n for n in notes if n), "no pair of runs that differ only in their NUMA node")
        return [Finding(f"Remote NUMA placement could not be tested: {reason}.".replace("..", "."), **kw)]
    pair_keys = penalty.columns[: penalty.columns.index("local_numa")]
    called = penalty.filter(pl.col("verdict").is_in(_CALLED), pl.col("statistic") == "mean")
    out = []
    if called.is_empty():
        out.append(Finding("No NUMA penalty beyond the minimum effect: every remote-node change's CI includes "
                           "changes too small to call.", level="good", **kw))
    else:
        worst = called.sort(pl.col("penalty_pct").abs(), descending=True).row(0, named=True)
        out.append(Finding(
            f"Remote NUMA node {worst['remote_numa']} costs {group_name(worst, pair_keys)} "
            f"{pct(worst['penalty_pct'], True)} {_what({**worst, 'stage': worst['stage']})} against node "
            f"{worst['local_numa']} (CI {pct(worst['ci_low_pct'], True)} … {pct(worst['ci_high_pct'], True)}).",
            level="warn", **kw))
    if "sensitivity_pct" in penalty.columns:
        sens = penalty.select(*pair_keys, "sensitivity_pct").unique(maintain_order=True).drop_nulls("sensitivity_pct")
        if sens.height > 1:
            ranked = sens.sort("sensitivity_pct", descending=True)
            out.append(Finding("NUMA sensitivity, most first: " + listing(
                [f"{group_name(r, pair_keys)} ({pct(r['sensitivity_pct'])})" for r in row_dicts(ranked)], limit=6) + ".",
                **kw))
    return out


# -- distributed ------------------------------------------------------------------------------------------------
def comm_findings(comm: pl.DataFrame, keys: Sequence[str] = (), *, figure: str | None = None,
                  table: str | None = None) -> list[Finding]:
    """Per rank (``all`` rows): how much of its NCCL kernel time no compute kernel overlaps (exposed)."""
    if comm.is_empty() or not {"collective", "rank", "comm_ms", "exposed_pct"} <= set(comm.columns):
        return []
    rows = comm.filter(pl.col("collective") == "all").sort("rank")
    if rows.is_empty():
        return []
    parts = [f"{pct(r['exposed_pct'])} of rank {r['rank']}'s {num(r['comm_ms'])} ms" for r in row_dicts(rows)]
    high = rows["exposed_pct"].max() >= 50
    text = ("Communication is mostly exposed" if high else "Communication is mostly hidden behind compute") + \
        f": {listing(parts)} of NCCL kernel time run while no compute kernel does."
    if rows.height > 1 and rows["comm_ms"].min() > 0:
        hi, lo = rows.sort("comm_ms").row(-1, named=True), rows.sort("comm_ms").row(0, named=True)
        if hi["comm_ms"] / lo["comm_ms"] >= 2:
            text += (f" Rank {hi['rank']} spends {times(hi['comm_ms'] / lo['comm_ms'])} the NCCL time of rank "
                     f"{lo['rank']}: time inside NCCL kernels includes waiting for the other ranks (see skew).")
    return [Finding(text, figure=figure, table=table, level="warn" if high else "good", section="distributed")]


def skew_findings(skew: pl.DataFrame, steps: pl.DataFrame | None = None, *, figure: str | None = None,
                  table: str | None = None) -> list[Finding]:
    """Which rank arrives last at the collectives (``all`` rows of :func:`nsysan.skew`), how late, and what it
    costs the others in waiting; with the per-step frame, in how many steps it was the straggler."""
    if skew.is_empty() or not {"collective", "rank", "straggler_calls", "calls"} <= set(skew.columns):
        return []
    rows = skew.filter(pl.col("collective") == "all").sort("straggler_calls", descending=True)
    if rows.height < 2:
        return []
    last = rows.row(0, named=True)
    others = rows.slice(1)
    waited = others["wait_ms_total"].sum() if "wait_ms_total" in others.columns else None
    text = (f"Rank {last['rank']} arrives last at {last['straggler_calls']} of {last['calls']} NCCL calls, a median "
            f"{num(last['arrival_late_ms_p50'])} ms (p95 {num(last['arrival_late_ms_p95'])} ms) after the first rank")
    if waited:
        text += f"; the other rank(s) wait {num(waited)} ms in total inside NCCL kernels for it"
    if steps is not None and not steps.is_empty() and "straggler_rank" in steps.columns:
        lagging = int((steps["straggler_rank"] == last["rank"]).sum())
        text += f". It is the straggler of {lagging} of {steps.height} steps"
    share = last["straggler_calls"] / max(last["calls"], 1)
    return [Finding(text + ".", figure=figure, table=table, level="warn" if share >= 0.75 else "info",
                    section="distributed")]

