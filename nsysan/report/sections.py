"""The report's sections about how the runs perform: what was run, stage latency, throughput and scaling, copy
bandwidth, flags, GPU utilization, top kernels, and the GPU timeline and notes. The sections that set runs against
each other (comparisons, NUMA pairs, the ranks of a distributed run) are in :mod:`~nsysan.report.sections_compare`.

Each ``*_section`` function reads only the analyses' frames and returns a :class:`~nsysan.report.model.Section`;
its figures are queued on a :class:`~nsysan.report.figures.Figures`. A section that lacks its data says so in
``missing``.
"""
from __future__ import annotations

import polars as pl

from nsysan.plots.frames import scaling_axis, transfer_share
from nsysan.report import findings as F
from nsysan.report.data import Analyses
from nsysan.report.figures import Figures
from nsysan.report.model import Column, Section
from nsysan.report.tables import cell, key_columns, table
from nsysan.report.words import group_name, listing, pct


# -- What was run -------------------------------------------------------------------------------------------------
def runs_section(found: Analyses) -> Section:
    s = Section("runs", "What was run",
                intro="The runner's record of each study (results.json, experiment_summary.json) and what each "
                      "export holds.")
    records = found.studies.records
    counts: dict[str, int] = {}
    reasons: list[str] = []
    for record in records:
        s.facts += [("Study", f"{record.experiment or '—'} ({record.source})"), ("Started", record.created or "—"),
                    ("GPUs", "; ".join(record.gpu_names()) or "—"),
                    ("NUMA nodes", ", ".join(map(str, record.numa_nodes())) or "—"),
                    ("nsys (runner)", record.nsys_version or "—"),
                    ("Runs", ", ".join(f"{n} {status}" for status, n in record.counts.items()) or "none recorded")]
        for status, n in record.counts.items():
            counts[status] = counts.get(status, 0) + n
        reasons += [f"{r.name}: {r.reason}" for r in record.not_ok if r.reason and r.status != "skipped"]
        s.notes += [f"{record.experiment}: {n}" for n in record.notes]
    if not records:
        s.notes.append("No study record (results.json / experiment_summary.json) found next to these exports: the "
                       "run history is unknown; the exports are listed below.")
    s.notes += list(found.studies.problems)
    bad = [(record.experiment, r) for record in records for r in record.not_ok]
    if bad:
        frame = pl.DataFrame([{"study": e, "run": r.name, "status": r.status, "reason": r.reason or "—",
                               "log": r.log or "—"} for e, r in bad])
        s.tables.append(table("tab-runs-not-ok", "Runs that did not succeed", frame, [
            Column("study", "Study", numeric=False), Column("run", "Run", numeric=False),
            Column("status", "Status", numeric=False), Column("reason", "Reason", numeric=False),
            Column("log", "Log", numeric=False)], caption="From the runner's results.json."))
    names = set(found.collection.names.values())
    no_export = [r.name for record in records for r in record.runs if r.status == "ok" and r.name not in names]
    if no_export:
        s.notes.append(f"{len(no_export)} successful run(s) have no export among the inputs "
                       f"({listing(no_export)}): run `nsysan export` on the study folder to include them.")
    info = found["info"]
    frame = info.frame
    if not frame.is_empty():
        keys = [k for k in ("model", "variant", "gpu", "numa") if k in frame.columns and frame[k].is_not_null().any()]
        s.tables.append(table("tab-exports", "Exports analysed", frame, [
            Column("report", "Report", numeric=False), *key_columns(keys),
            Column("nsys_version", "nsys", numeric=False), Column("export_schema", "Schema", numeric=False),
            Column("nvtx_ranges", "NVTX ranges"), Column("kernels", "Kernels"), Column("memcpys", "Copies"),
            Column("memsets", "Memsets"), Column("gpus", "GPUs")]))
    s.missing += info.missing("What the exports hold")
    if found.unreadable:
        frame = pl.DataFrame([{"path": str(f.path), "reason": f.reason} for f in found.unreadable])
        s.tables.append(table("tab-unreadable", "Exports that could not be read", frame, [
            Column("path", "Path", numeric=False), Column("reason", "Why", numeric=False)],
            caption="Left out of every section; the other exports are analysed."))
    target = "tab-runs-not-ok" if bad else ("tab-unreadable" if found.unreadable else "tab-exports")
    s.findings = F.run_findings(counts, failed_reasons=reasons, unreadable=len(found.unreadable),
                                analysed=found.analysed, table=target)
    return s


# -- Stage latency --------------------------------------------------------------------------------------------------
LATENCY_COLUMNS = [Column("range", "Stage", numeric=False), Column("instances", "Instances"),
                   Column("range_ms_mean", "CPU mean", "ms"), Column("range_ms_p95", "CPU p95", "ms"),
                   Column("gpu_proj_ms_mean", "GPU mean", "ms"), Column("gpu_proj_ms_p95", "GPU p95", "ms"),
                   Column("gpu_busy_ms_mean", "GPU busy mean", "ms"), Column("share_pct", "Share of batch", "%")]


def stages_section(found: Analyses, draw: Figures) -> Section:
    s = Section("stages", "Per-stage latency",
                intro="CPU time of each NVTX range and the GPU time of the work it launched (projected: first op "
                      "start to last op end, as nsys stats counts it; busy: the union of its ops), over the measured "
                      "instances.")
    lat = found["latency"]
    s.missing += lat.missing("Stage latency")
    s.notes += list(lat.notes)
    frame = lat.frame
    if frame.is_empty():
        return s
    keys = list(found.by)
    stages = found.stages or [r for r in frame["range"].unique(maintain_order=True).to_list() if r != found.batch]
    shown = [*(x for x in [found.batch] if x), *stages]
    rows = frame.filter(pl.col("range").is_in(shown))
    if found.batch:
        shares = F.stage_shares(frame, keys, batch=found.batch, stages=stages)
        if not shares.is_empty():
            rows = rows.join(shares.select(*keys, "range", "share_pct"), on=[*keys, "range"], how="left",
                             nulls_equal=True, maintain_order="left")
    fig = draw.add(s, "fig-stages", "Stage breakdown", "stage_breakdown", frame.filter(pl.col("range").is_in(shown)),
                   by=keys, stages=stages, total=found.batch, caption=f"Bars: medians per stage; whiskers: p95; ◆: the whole {found.batch or 'batch'}'s median.")
    s.tables.append(table("tab-stages", "Stage latency per group", rows, [*key_columns(keys), *LATENCY_COLUMNS],
                          caption="Means and p95 over the measured instances; share = stage mean / batch mean."))
    if found.batch:
        s.findings += F.stage_share_findings(frame, keys, batch=found.batch, stages=stages, figure=fig,
                                             table="tab-stages")
    if "forward" in stages:
        s.findings += F.gpu_idle_in_stage_findings(frame, keys, stage="forward", figure=fig, table="tab-stages")
    return s


# -- Throughput and scaling ----------------------------------------------------------------------------------------------
def throughput_section(found: Analyses, draw: Figures) -> Section:
    s = Section("throughput", "Throughput and scaling",
                intro="Samples per second over the measured batches (batch sizes from the run metadata), and how "
                      "the GPU time splits between transfers (h2d + d2h) and compute (forward).")
    out = found["throughput"]
    s.missing += out.missing("Throughput")
    s.notes += list(out.notes)
    keys = list(found.by)
    frame = out.frame
    if not frame.is_empty():
        s.tables.append(table("tab-throughput", "Throughput per group", frame, [
            *key_columns(keys), Column("runs", "Runs"), Column("batches", "Batches"), Column("batch_size", "Batch size"),
            Column("samples_per_s", "Throughput", "samples/s"), Column("batches_per_s", "Batches/s", "1/s"),
            Column("batch_ms_p50", "Batch p50", "ms"), Column("batch_ms_p95", "Batch p95", "ms"),
            Column("note", "Note", numeric=False)]))
        s.findings += F.throughput_findings(frame, keys, table="tab-throughput")
    latency = found["latency"].frame
    if latency.is_empty() or "model" not in keys or not {"h2d", "forward"} <= set(latency["range"].to_list()):
        return s
    try:
        shares = transfer_share(latency)
    except ValueError as e:
        s.missing.append(f"Transfer and compute GPU time could not be computed: {e}")
        return s
    s.tables.append(table("tab-transfer-share", "Transfer and compute GPU time per batch", shares, [
        *key_columns(keys), Column("transfer_ms", "Transfer (h2d + d2h) GPU", "ms"),
        Column("compute_ms", "Compute (forward) GPU", "ms"), Column("transfer_share_pct", "Transfer share", "%")],
        caption="Means per batch of the stages' projected GPU time."))
    try:
        x = scaling_axis(latency)
    except ValueError:
        x = None
    fig = None
    if x:
        fig = draw.add(s, "fig-scaling", f"Scaling with model {x}", "scaling", latency,
                       frame if not frame.is_empty() else None, x=x)
    s.findings += F.transfer_share_findings(shares, keys, figure=fig, table="tab-transfer-share")
    return s


# -- Bandwidth ---------------------------------------------------------------------------------------------------------
BANDWIDTH_COLUMNS = [Column("stage", "Stage", numeric=False), Column("direction", "Direction", numeric=False),
                     Column("src_kind", "From", numeric=False), Column("dst_kind", "To", numeric=False),
                     Column("copies", "Copies"), Column("mb_total", "Bytes", "MB"),
                     Column("bandwidth_gbps", "Bandwidth", "GB/s"), Column("copy_gbps_p50", "Per copy p50", "GB/s"),
                     Column("tiny_copy_pct", "Tiny copies", "%"), Column("flags", "Flags", numeric=False)]


def bandwidth_section(found: Analyses, draw: Figures) -> Section:
    s = Section("bandwidth", "Copy bandwidth",
                intro="GB/s = bytes / summed copy time (1 GB = 10⁹ B), per direction and memory kind; per stage below.")
    summary, staged, sizes = found["bandwidth"], found["bandwidth_stage"], found["copy_sizes"]
    s.missing += summary.missing("Bandwidth") + staged.missing("Bandwidth per stage")
    s.notes += list(dict.fromkeys([*summary.notes, *staged.notes]))
    keys = list(found.by)
    if summary.frame.is_empty():
        return s
    fig = draw.add(s, "fig-bandwidth", "Copy bandwidth and copy sizes", "bandwidth_chart", summary.frame,
                   sizes.frame if not sizes.frame.is_empty() else None)
    frame = staged.frame if not staged.frame.is_empty() else summary.frame
    frame = frame.with_columns(mb_total=pl.col("bytes_total") / 1e6)
    s.tables.append(table("tab-bandwidth", "Copy bandwidth per group and stage", frame,
                          [*key_columns(keys), *BANDWIDTH_COLUMNS], marked=lambda r: r.get("flags") is not None,
                          caption="Stage: the innermost NVTX range that launched the copy. Highlighted: flagged."))
    s.findings += F.pinned_vs_pageable_findings(frame, keys, figure=fig, table="tab-bandwidth")
    return s


# -- Flags ---------------------------------------------------------------------------------------------------------------
def flags_section(found: Analyses) -> Section:
    s = Section("flags", "What nsysan flags",
                intro="Pageable memory in asynchronous copies, groups of tiny copies, and launch-bound windows.")
    keys = list(found.by)
    rows = []
    staged = found["bandwidth_stage"].frame
    if not staged.is_empty():
        for r in staged.filter(pl.col("flags").is_not_null()).iter_rows(named=True):
            where = f"{r.get('stage') or '(no range)'} · {r['direction']} {r['src_kind'] or '—'} → {r['dst_kind'] or '—'}"
            rows.append({"flag": "copies", "group": group_name(r, keys), "where": where, "evidence": r["flags"],
                         "value": f"{cell(r['bandwidth_gbps'])} GB/s over {r['copies']:,} copies"})
    util = found["utilization"].frame
    if not util.is_empty():
        for r in util.filter(pl.col("launch_bound")).iter_rows(named=True):
            rows.append({"flag": "launch-bound", "group": group_name(r, keys),
                         "where": f"GPU {r['device_id']} over {r['window']}",
                         "evidence": f"idle {pct(r['idle_pct'])} of the window, {pct(r['launch_gap_idle_pct'])} of it "
                                     "in gaps < 100 µs",
                         "value": f"utilization {pct(r['utilization_pct'])}"})
    if rows:
        s.tables.append(table("tab-flags", "Flags", pl.DataFrame(rows), [
            Column("flag", "Flag", numeric=False), Column("group", "Group", numeric=False),
            Column("where", "Where", numeric=False), Column("evidence", "Evidence", numeric=False),
            Column("value", "Measured", numeric=False)]))
    else:
        s.notes.append("Nothing flagged: no pageable asynchronous copies, tiny-copy groups or launch-bound windows.")
    s.findings += F.copy_flag_findings(staged, keys, figure="fig-bandwidth" if found["bandwidth"].result else None,
                                       table="tab-flags" if rows else None)
    return s


# -- Utilization ---------------------------------------------------------------------------------------------------------
UTIL_COLUMNS = [Column("device_id", "GPU"), Column("window", "Window", numeric=False),
                Column("window_ms", "Window", "ms"), Column("utilization_pct", "Kernel busy", "%"),
                Column("busy_pct", "Busy (any op)", "%"), Column("idle_pct", "Idle", "%"),
                Column("idle_gaps", "Idle gaps"), Column("gap_us_p50", "Median gap", "µs"),
                Column("launch_gap_idle_pct", "Idle in gaps < 100 µs", "%"), Column("launch_bound", "Launch-bound",
                                                                                    numeric=False)]


def utilization_section(found: Analyses, draw: Figures) -> Section:
    s = Section("utilization", "GPU utilization",
                intro="Busy time is the union of GPU op intervals inside the window (never a sum); windows: the "
                      "measured batches, and each forward pass.")
    util, forward, parts = found["utilization"], found["utilization_forward"], found["utilization_parts"]
    s.missing += util.missing("GPU utilization")
    s.notes += list(util.notes)
    keys = list(found.by)
    frames = [f for f in (util.frame, forward.frame) if not f.is_empty()]
    if not frames:
        return s
    both = pl.concat(frames, how="diagonal_relaxed").with_columns(window_ms=pl.col("window_ns") / 1e6)
    fig = draw.add(s, "fig-busy", "GPU busy and idle", "busy_idle", pl.concat(frames, how="diagonal_relaxed"))
    gaps = None
    if not parts.frame.is_empty():
        gaps = draw.add(s, "fig-gaps", "Idle gaps", "idle_gaps", parts.frame.select(
            *keys, *(c for c in ("device_id", "stream_id", "window") if c in parts.frame.columns), "gaps_ns"), by=keys,
                        caption="Weighted by gap length: where the idle time goes.")
    s.tables.append(table("tab-utilization", "GPU utilization per group and window", both,
                          [*key_columns(keys), *UTIL_COLUMNS], marked=lambda r: bool(r.get("launch_bound"))))
    target = forward if not forward.frame.is_empty() else util
    s.findings += F.utilization_findings(target.frame, keys, figure=fig or gaps, table="tab-utilization")
    return s


# -- Kernels -------------------------------------------------------------------------------------------------------------
def kernels_section(found: Analyses, draw: Figures) -> Section:
    s = Section("kernels", "Top kernels", intro="The kernels that take most GPU time over the measured batches.")
    top = found["top_kernels"]
    s.missing += top.missing("Top kernels")
    keys = list(found.by)
    frame = top.frame
    if frame.is_empty():
        return s
    shown = frame.group_by([*keys, "device_id"], maintain_order=True).head(5) if keys else frame
    fig = draw.add(s, "fig-kernels", "Top kernels", "top_kernels_chart", frame, top_n=6)
    s.tables.append(table("tab-kernels", "Top kernels per group (five each)", shown.with_columns(
        time_ms=pl.col("time_ns") / 1e6), [*key_columns(keys), Column("name", "Kernel", numeric=False),
                                           Column("instances", "Launches"), Column("time_ms", "Time", "ms"),
                                           Column("busy_share_pct", "Share of kernel time", "%")]))
    s.findings += F.top_kernel_findings(frame, keys, figure=fig, table="tab-kernels")
    return s



# -- Timeline --------------------------------------------------------------------------------------------------------------------
def timeline_section(found: Analyses, draw: Figures) -> Section:
    s = Section("timeline", "GPU timeline",
                intro="The NVTX ranges of the launching threads and the GPU's kernels and copies, over a few measured "
                      f"{'steps per rank' if found.distributed else 'batches'} of "
                      f"{found.timeline_report or 'one report'} (the export with the most kernels).")
    out = found["timeline"]
    s.missing += out.missing("The timeline")
    if not out.frame.is_empty():
        draw.add(s, "fig-timeline", f"GPU timeline of {found.timeline_report}", "gpu_timeline", out.frame,
                 caption=str(out.frame["window"][0]))
    return s


# -- Notes ------------------------------------------------------------------------------------------------------------------------
def notes_section(found: Analyses) -> Section:
    s = Section("notes", "Notes and definitions")
    seen = dict.fromkeys(n for o in found.outcomes.values() for n in o.notes)
    s.notes = [*found.notes, *seen]
    s.intro = ("Definitions of every column: docs/metrics.md of nsysan. Numbers are over the measured instances "
               f"({found.select.describe()}). Each section's table is also available from the command line "
               "(nsysan latency, throughput, bandwidth, utilization, compare, numa, comm, skew) as CSV or JSON.")
    return s
