"""Findings about how the runs perform: plain sentences computed from the analysis frames, never written by hand.

Every function takes the frames of :mod:`nsysan.api` (columns as docs/library.md lists them) and returns a list
of :class:`~nsysan.report.model.Finding`, each pointing to the figure and table that hold its evidence (ids
given by the caller). A function returns nothing when its frame holds nothing worth saying; it never raises
on a missing optional column. ``keys`` are the grouping keys of the frame (the report's ``by``).

Findings that set runs against each other (comparisons, NUMA placement, the ranks of a distributed run) are in
:mod:`~nsysan.report.findings_compare`; the words both use (numbers, percentages, group names) in
:mod:`~nsysan.report.words`.
"""
from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from nsysan.report.model import Finding
from nsysan.report.words import (
    DIRECTION_WORDS,
    group_name,
    listing,
    matching,
    num,
    order_groups,
    pct,
    pct_range,
    row_dicts,
    times,
)


# -- stages -----------------------------------------------------------------------------------------------------
def batch_stages(trace: pl.DataFrame, batch_patterns: Sequence[str] = ("batch_*", "step_*")) -> list[str]:
    """Names of the ranges directly inside a measured batch (``parent`` matches a batch pattern), in the order
    they first start: the pipeline's stages (preprocess, h2d, forward, d2h; data, forward, backward, ...)."""
    if trace.is_empty() or "parent" not in trace.columns:
        return []
    import fnmatch

    parents = [p for p in trace["parent"].unique().drop_nulls().to_list()
               if any(fnmatch.fnmatchcase(p, g) for g in batch_patterns)]
    inside = trace.filter(pl.col("parent").is_in(parents)).sort("start_ns")
    return inside["range"].unique(maintain_order=True).to_list()


def stage_share_findings(latency: pl.DataFrame, keys: Sequence[str], *, batch: str, stages: Sequence[str],
                         figure: str | None = None, table: str | None = None) -> list[Finding]:
    """Which stage takes most of the batch, per group: each stage's mean CPU time (``range_ms_mean``) as a share
    of the batch range's mean (means add up, medians do not). Groups in model-size order where models are
    ViT names, so that a change of the largest stage reads "from <model> up"; and the stage whose share grows
    most with model size."""
    shares = stage_shares(latency, keys, batch=batch, stages=stages)
    if shares.is_empty():
        return []
    groups, by_size = order_groups(shares.select(keys).unique(maintain_order=True), keys)
    per_group = []
    for row in row_dicts(groups):
        part = matching(shares, row, keys).sort("share_pct", descending=True)
        top = part.row(0, named=True)
        per_group.append((group_name(row, keys), top["range"], top["share_pct"]))
    out = []
    kw = {"figure": figure, "table": table, "section": "stages"}
    names = [g for g, _, _ in per_group]
    largest = [s for _, s, _ in per_group]
    values = [v for _, _, v in per_group]
    if len(set(largest)) == 1:
        lo, hi = min(values), max(values)
        where = (f"in {names[0]}" if len(names) == 1 else
                 f"in every group ({pct(lo)} in {names[values.index(lo)]} to {pct(hi)} in {names[values.index(hi)]})")
        text = (f"The {largest[0]} stage takes {pct(values[0])} of the mean batch time" if len(names) == 1 else
                f"The {largest[0]} stage is the largest {where}")
        out.append(Finding(f"{text}: the first place to look.", level="warn" if hi >= 50 else "info", **kw))
    else:
        # the longest run of one largest stage at the end (the biggest models)
        tail = len(largest) - 1
        while tail > 0 and largest[tail - 1] == largest[-1]:
            tail -= 1
        if by_size and 0 < tail and len(largest) - tail >= 2:
            part = values[tail:]
            head = listing([f"{s} in {g} ({pct(v)})" for g, s, v in per_group[:tail]])
            out.append(Finding(f"The {largest[-1]} stage is {pct_range(min(part), max(part))} of batch time from "
                               f"{names[tail]} up and the largest stage there; below it: {head}.", **kw))
        else:
            out.append(Finding("The largest stage per group: " + listing(
                [f"{s} in {g} ({pct(v)})" for g, s, v in per_group], limit=6) + ".", **kw))
    if by_size and len(per_group) >= 3:
        trend = _growing_stage(shares, groups, keys, stages)
        if trend is not None:
            stage, first, last = trend
            out.append(Finding(f"The {stage} stage's share of batch time grows with model size: {pct(first[1])} in {first[0]} "
                               f"to {pct(last[1])} in {last[0]}.", **kw))
    return out


def stage_shares(latency: pl.DataFrame, keys: Sequence[str], *, batch: str, stages: Sequence[str]) -> pl.DataFrame:
    """Per group and stage: ``range_ms_mean``, the batch's mean and ``share_pct`` = 100 × stage / batch."""
    needed = {"range", "range_ms_mean"}
    if latency.is_empty() or not needed <= set(latency.columns) or not stages:
        return pl.DataFrame()
    batches = latency.filter(pl.col("range") == batch).select(*keys, batch_ms=pl.col("range_ms_mean"))
    if batches.is_empty():
        return pl.DataFrame()
    part = latency.filter(pl.col("range").is_in(list(stages))).select(*keys, "range", "range_ms_mean")
    joined = part.join(batches, on=list(keys), how="inner", nulls_equal=True, maintain_order="left") if keys else \
        part.join(batches, how="cross")
    return joined.with_columns(share_pct=100 * pl.col("range_ms_mean") / pl.col("batch_ms")).filter(
        pl.col("share_pct").is_finite())


def _growing_stage(shares: pl.DataFrame, groups: pl.DataFrame, keys: Sequence[str], stages: Sequence[str]
                   ) -> tuple[str, tuple[str, float], tuple[str, float]] | None:
    """The stage whose share rises most from the smallest to the largest model, when it rises at (nearly)
    every step (at most one step down) and by at least 10 points."""
    best = None
    for stage in stages:
        seq = []
        for row in row_dicts(groups):
            hit = matching(shares, row, keys).filter(pl.col("range") == stage)
            if hit.height:
                seq.append((group_name(row, keys), float(hit["share_pct"][0])))
        if len(seq) < 3:
            continue
        downs = sum(b[1] < a[1] for a, b in zip(seq, seq[1:]))
        rise = seq[-1][1] - seq[0][1]
        if downs <= 1 and rise >= 10 and (best is None or rise > best[0]):
            best = (rise, stage, seq[0], seq[-1])
    return None if best is None else (best[1], best[2], best[3])


def gpu_idle_in_stage_findings(latency: pl.DataFrame, keys: Sequence[str], *, stage: str = "forward",
                               figure: str | None = None, table: str | None = None) -> list[Finding]:
    """Where a stage's GPU span is mostly idle: busy (union of its ops) / projected (first op start to last op
    end) below 50 %, for the groups whose stage launched GPU work."""
    needed = {"range", "gpu_proj_ms_mean", "gpu_busy_ms_mean"}
    if latency.is_empty() or not needed <= set(latency.columns):
        return []
    rows = latency.filter(pl.col("range") == stage, pl.col("gpu_proj_ms_mean") > 0.05,
                          pl.col("gpu_busy_ms_mean").is_not_null())
    if rows.is_empty():
        return []
    rows = rows.with_columns(busy_pct=100 * pl.col("gpu_busy_ms_mean") / pl.col("gpu_proj_ms_mean"))
    low = rows.filter(pl.col("busy_pct") < 50)
    if low.is_empty():
        return []
    lo, hi = low["busy_pct"].min(), low["busy_pct"].max()
    names = [group_name(r, keys) for r in row_dicts(low)]
    span = pct_range(lo, hi)
    return [Finding(f"In {stage}, the GPU is busy only {span} of the span from its first to its last kernel "
                    f"({listing(names)}): the GPU waits between kernels for the CPU to launch them.",
                    figure=figure, table=table, level="warn", section="stages")]


# -- throughput -------------------------------------------------------------------------------------------------
def throughput_findings(throughput: pl.DataFrame, keys: Sequence[str], *, table: str | None = None,
                        figure: str | None = None) -> list[Finding]:
    """The throughput range across groups (samples/s where batch sizes are known, else batches/s) and the
    group with the widest batch-time tail (p95 / p50 ≥ 1.3)."""
    if throughput.is_empty() or "batches_per_s" not in throughput.columns:
        return []
    rate = "samples_per_s" if throughput["samples_per_s"].is_not_null().all() else "batches_per_s"
    unit = "samples/s" if rate == "samples_per_s" else "batches/s (batch size unknown)"
    rows = throughput.filter(pl.col(rate).is_not_null()).sort(rate)
    kw = {"table": table, "figure": figure, "section": "throughput"}
    out = []
    if rows.height == 1:
        r = rows.row(0, named=True)
        out.append(Finding(f"{group_name(r, keys)} runs at {num(r[rate])} {unit} over {r['batches']} measured "
                           f"batches (median batch {num(r['batch_ms_p50'])} ms).", **kw))
    elif rows.height > 1:
        lo, hi = rows.row(0, named=True), rows.row(-1, named=True)
        out.append(Finding(f"Throughput ranges from {num(lo[rate])} {unit} ({group_name(lo, keys)}) to "
                           f"{num(hi[rate])} ({group_name(hi, keys)}), {times(hi[rate] / lo[rate])} apart.", **kw))
    if {"batch_ms_p95", "batch_ms_p50"} <= set(rows.columns) and rows.height:
        tails = rows.with_columns(tail=pl.col("batch_ms_p95") / pl.col("batch_ms_p50")).sort("tail", descending=True)
        worst = tails.row(0, named=True)
        if worst["tail"] is not None and worst["tail"] >= 1.3:
            out.append(Finding(f"Batch time is uneven in {group_name(worst, keys)}: p95 {num(worst['batch_ms_p95'])} ms "
                               f"is {times(worst['tail'])} the median {num(worst['batch_ms_p50'])} ms.", level="warn",
                               **kw))
    return out


# -- copies -----------------------------------------------------------------------------------------------------
def _host_kind(direction: str) -> str | None:
    return {"Host-to-Device": "src_kind", "Device-to-Host": "dst_kind"}.get(direction)


def pinned_vs_pageable_findings(bandwidth: pl.DataFrame, keys: Sequence[str], *, figure: str | None = None,
                                table: str | None = None) -> list[Finding]:
    """Per copy direction between host and device: bandwidth from pinned against pageable host memory
    (bytes / summed copy time over the rows of each kind). Within one model where it has both (the fair
    comparison); else over all groups."""
    needed = {"direction", "src_kind", "dst_kind", "bytes_total", "time_total_ns"}
    if bandwidth.is_empty() or not needed <= set(bandwidth.columns):
        return []
    out = []
    inside = ""
    if "stage" in bandwidth.columns and bandwidth["stage"].is_not_null().any():
        bandwidth = bandwidth.filter(pl.col("stage").is_not_null())
        inside = "copies inside pipeline stages, "
    for direction in ("Host-to-Device", "Device-to-Host"):
        kind = _host_kind(direction)
        part = bandwidth.filter(pl.col("direction") == direction).with_columns(_host=pl.col(kind))
        if not {"Pinned", "Pageable"} <= set(part["_host"].drop_nulls().to_list()):
            continue
        model_keys = [k for k in ("model",) if k in keys and k in part.columns]
        scope = f"{inside}over all groups"
        if model_keys:
            both = (part.group_by(model_keys).agg(pl.col("_host").n_unique().alias("n"),
                                                  (pl.col("_host") == "Pinned").any().alias("p"),
                                                  (pl.col("_host") == "Pageable").any().alias("q"))
                    .filter(pl.col("p") & pl.col("q")))
            if both.height:
                part = part.join(both.select(model_keys), on=model_keys, how="semi")
                scope = f"{inside}within {listing(both['model'].sort().to_list())}"
        rates = part.group_by("_host").agg(gbps=pl.col("bytes_total").sum() / pl.col("time_total_ns").sum(),
                                           mean_bytes=pl.col("bytes_total").sum() / pl.col("copies").sum())
        rate = dict(zip(rates["_host"].to_list(), rates["gbps"].to_list()))
        size = dict(zip(rates["_host"].to_list(), rates["mean_bytes"].to_list()))
        pinned, pageable = rate["Pinned"], rate["Pageable"]
        short = DIRECTION_WORDS[direction]
        kw = {"figure": figure, "table": table, "section": "bandwidth"}
        apart = max(size["Pinned"], size["Pageable"]) / max(min(size["Pinned"], size["Pageable"]), 1)
        if apart > 8:  # rates of copies this different in size say more about size than memory kind
            out.append(Finding(f"{short} copies from pageable memory run at {num(pageable)} GB/s and from pinned "
                               f"memory at {num(pinned)} GB/s ({scope}), but they differ in size (mean "
                               f"{_bytes(size['Pageable'])} against {_bytes(size['Pinned'])}): per-copy overhead, "
                               "not the memory kind, sets the smaller ones' rate.", **kw))
        elif pageable > 0 and pinned / pageable >= 1.1:
            out.append(Finding(f"Pinned {short} copies reach {num(pinned)} GB/s, {times(pinned / pageable)} the "
                               f"{num(pageable)} GB/s of pageable ones ({scope}): pin the host buffers.", level="warn",
                               **kw))
        else:
            out.append(Finding(f"{short} copies run at about the same rate from pinned ({num(pinned)} GB/s) and "
                               f"pageable ({num(pageable)} GB/s) memory ({scope}).", **kw))
    return out


def _bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{num(value / scale)} {unit}"
    return f"{value:.0f} B"


def copy_flag_findings(bandwidth: pl.DataFrame, keys: Sequence[str], *, figure: str | None = None,
                       table: str | None = None) -> list[Finding]:
    """The flags of the bandwidth analysis in sentences: async copies from or to pageable memory (staged by
    the driver: neither asynchronous nor full speed), and copy groups dominated by tiny copies."""
    if bandwidth.is_empty() or "pageable_async_copies" not in bandwidth.columns:
        return []
    rows = bandwidth.filter(pl.col("direction") != "Memset") if "direction" in bandwidth.columns else bandwidth
    kw = {"figure": figure, "table": table, "level": "warn", "section": "flags"}
    out = []
    pageable = rows.filter(pl.col("pageable_async_copies") > 0)
    if pageable.height:
        groups = pageable.select(keys).unique().height if keys else 1
        every = rows.select(keys).unique().height if keys else 1
        parts = []
        for direction, part in pageable.group_by("direction", maintain_order=True):
            parts.append(f"{int(part['pageable_async_copies'].sum()):,} {DIRECTION_WORDS.get(direction[0], direction[0])}")
        where = "every group" if groups == every and every > 1 else listing(
            [group_name(r, keys) for r in row_dicts(pageable.select(keys).unique(maintain_order=True))])
        out.append(Finding(f"{' and '.join(parts)} asynchronous copies use pageable host memory ({where}): the driver "
                           "stages them through a pinned buffer, so they block the CPU thread and run below full "
                           "speed. Pin those host buffers (pin_memory=True, non_blocking copies).", **kw))
    if {"tiny_copies", "tiny_copy_pct"} <= set(rows.columns):
        tiny = rows.filter(pl.col("flags").is_not_null() & pl.col("flags").str.contains("tiny")) \
            if "flags" in rows.columns else rows.filter(pl.col("tiny_copy_pct") >= 50)
        if tiny.height:
            worst = tiny.sort("tiny_copies", descending=True).row(0, named=True)
            direction = DIRECTION_WORDS.get(worst.get("direction"), worst.get("direction"))
            stage = f" in {worst['stage']}" if worst.get("stage") else " outside any NVTX range" if "stage" in worst else ""
            out.append(Finding(f"Tiny copies dominate {tiny.height} copy group(s): e.g. {group_name(worst, keys)}{stage}, "
                               f"{pct(worst['tiny_copy_pct'])} of its {int(worst['copies']):,} {direction} copies are under "
                               "64 KiB, where per-copy overhead outweighs the transfer. Batch them into fewer, larger "
                               "copies.", **kw))
    return out


# -- utilization ------------------------------------------------------------------------------------------------
def utilization_findings(utilization: pl.DataFrame, keys: Sequence[str], *, figure: str | None = None,
                         table: str | None = None) -> list[Finding]:
    """Launch-bound windows (idle ≥ 50 % of the window, mostly in gaps < 100 µs) and the utilization range."""
    needed = {"utilization_pct", "idle_pct", "launch_bound", "launch_gap_idle_pct", "window"}
    if utilization.is_empty() or not needed <= set(utilization.columns):
        return []
    unit_keys = [*keys, *(["device_id"] if "device_id" in utilization.columns and
                           utilization["device_id"].n_unique() > 1 else [])]
    out = []
    kw = {"figure": figure, "table": table, "section": "utilization"}
    window = utilization["window"][0]
    bound = utilization.filter(pl.col("launch_bound"))
    if bound.height:
        names = [group_name(r, unit_keys) for r in row_dicts(bound)]
        out.append(Finding(
            f"Launch-bound over {window} in {listing(names)}: the GPU is idle {_span(bound['idle_pct'])} of the "
            f"window and {_span(bound['launch_gap_idle_pct'])} of that idle time lies in gaps under 100 µs, the CPU "
            "issuing the next kernel. Fewer, larger kernels (torch.compile, CUDA graphs) or larger batches help.",
            level="warn", **kw))
    if utilization.height > 1:
        rows = utilization.sort("utilization_pct")
        lo, hi = rows.row(0, named=True), rows.row(-1, named=True)
        out.append(Finding(f"Kernels keep the GPU busy {pct(lo['utilization_pct'])} ({group_name(lo, unit_keys)}) to "
                           f"{pct(hi['utilization_pct'])} ({group_name(hi, unit_keys)}) of {window}.", **kw))
    elif utilization.height == 1 and not bound.height:
        r = utilization.row(0, named=True)
        out.append(Finding(f"Kernels keep the GPU busy {pct(r['utilization_pct'])} of {window}.", **kw))
    return out


def _span(values: pl.Series) -> str:
    return pct_range(values.min(), values.max())


def top_kernel_findings(top: pl.DataFrame, keys: Sequence[str], *, figure: str | None = None,
                        table: str | None = None, min_share: float = 25.0) -> list[Finding]:
    """The single kernel with the largest share of kernel busy time in any group, when it is at least
    ``min_share`` %: where kernel-level tuning pays."""
    if top.is_empty() or not {"name", "busy_share_pct"} <= set(top.columns):
        return []
    row = top.sort("busy_share_pct", descending=True).row(0, named=True)
    if row["busy_share_pct"] < min_share:
        return []
    nccl = (" It is an NCCL kernel: its time includes waiting for the other ranks (see the distributed section)."
            if str(row["name"]).startswith("nccl") else "")
    return [Finding(f"One kernel, {_short(row['name'])}, takes {pct(row['busy_share_pct'])} of the kernel time in "
                    f"{group_name(row, keys)} ({row['instances']:,} launches).{nccl}", figure=figure, table=table,
                    section="kernels")]


def _short(name: str, width: int = 60) -> str:
    name = " ".join(str(name).split())
    return name if len(name) <= width else name[: width - 1] + "…"



# -- scaling ----------------------------------------------------------------------------------------------------
def transfer_share_findings(shares: pl.DataFrame, keys: Sequence[str], *, figure: str | None = None,
                            table: str | None = None) -> list[Finding]:
    """From :func:`nsysan.plots.transfer_share` (``transfer_ms``, ``compute_ms``, ``transfer_share_pct`` per
    group): the model from which compute (forward GPU time) outweighs transfers (h2d + d2h GPU time), in
    model-size order, and the range of the transfer share."""
    if shares.is_empty() or "transfer_share_pct" not in shares.columns or "model" not in keys:
        return []
    ordered, by_size = order_groups(shares.filter(pl.col("transfer_share_pct").is_not_null()), keys)
    if ordered.height < 2 or not by_size:
        return []
    values = ordered["transfer_share_pct"].to_list()
    names = [group_name(r, keys) for r in row_dicts(ordered)]
    kw = {"figure": figure, "table": table, "section": "throughput"}
    cross = next((i for i in range(1, len(values)) if values[i - 1] >= 50 > values[i]
                  and all(v < 50 for v in values[i:])), None)
    if cross is not None:
        return [Finding(f"Compute outweighs transfers from {names[cross]} up: transfers (h2d + d2h) are "
                        f"{pct(values[cross])} of the GPU time there, against {pct(values[cross - 1])} in "
                        f"{names[cross - 1]}.", **kw)]
    if all(v < 50 for v in values):
        return [Finding(f"Compute outweighs transfers in every model: transfers are "
                        f"{pct_range(min(values), max(values))} of the GPU time.", **kw)]
    if all(v >= 50 for v in values):
        return [Finding(f"Transfers outweigh compute in every model: {pct_range(min(values), max(values))} of the GPU "
                        "time is h2d + d2h.", level="warn", **kw)]
    return [Finding("Transfers' share of GPU time per model: " + listing(
        [f"{n} {pct(v)}" for n, v in zip(names, values)], limit=6) + ".", **kw)]


# -- what was run -----------------------------------------------------------------------------------------------
def run_findings(counts: dict[str, int], *, failed_reasons: Sequence[str] = (), unreadable: int = 0,
                 analysed: int = 0, table: str | None = None) -> list[Finding]:
    """How much of the study ran: runs per status from the runner's record, and exports nsysan could not read."""
    out = []
    if counts:
        planned = sum(counts.values())
        ok = counts.get("ok", 0)
        skipped = counts.get("skipped", 0)
        bad = planned - ok - skipped
        text = f"{ok} of {planned} planned run(s) succeeded"
        if skipped:
            text += f", {skipped} skipped"
        if bad:
            text += f", {bad} did not finish ({', '.join(f'{n} {s}' for s, n in counts.items() if s not in ('ok', 'skipped'))})"
            if failed_reasons:
                text += f": {_short(failed_reasons[0], 140)}"
        out.append(Finding(text + ".", table=table, level="warn" if bad else "good", section="runs"))
    if unreadable:
        out.append(Finding(f"{unreadable} export(s) could not be read and are left out; {analysed} analysed (see the "
                           "list under What was run).", table=table, level="warn", section="runs"))
    return out
