"""The report's sections that set runs against each other: each group against its baseline (confidence
intervals), NUMA placement (runs that differ only in their NUMA node), and the ranks of a distributed run
(communication and skew). Built like those of :mod:`~nsysan.report.sections`.
"""
from __future__ import annotations

import polars as pl

from nsysan.report import findings_compare as C
from nsysan.report.data import Analyses
from nsysan.report.figures import Figures
from nsysan.report.model import Column, Section
from nsysan.report.sections import LATENCY_COLUMNS, UTIL_COLUMNS
from nsysan.report.tables import key_columns, table


# -- Comparisons ------------------------------------------------------------------------------------------------------------
def compare_section(found: Analyses, draw: Figures) -> Section:
    s = Section("compare", "Comparisons with confidence intervals",
                intro="Each group against its baseline, per stage and metric: seeded block-bootstrap CIs "
                      "(Bonferroni-adjusted per comparison) and a verdict that calls a change only when the whole "
                      "interval clears the minimum effect.")
    out = found["compare"]
    if found.baseline is None:
        s.missing.append("No comparison: no setting (variant, compile mode, pipeline design, ...) varies within a "
                         "model. Give a baseline (nsysan report --baseline KEY=VALUE) to compare other groups.")
        return s
    s.intro += f" Baseline: {', '.join(f'{k}={v or chr(8212)}' for k, v in found.baseline.items())}."
    s.missing += out.missing("The comparison")
    s.notes += list(out.notes)
    keys = list(found.by)
    frame = out.frame
    if frame.is_empty():
        return s
    fig = draw.add(s, "fig-forest", "Changes against the baseline", "comparison_forest", frame)
    rows = frame.filter(pl.col("verdict") != "baseline", pl.col("statistic") == "mean")
    s.tables.append(table("tab-compare", "Changes against the baseline (means)", rows, [
        *key_columns(keys), Column("stage", "Stage", numeric=False), Column("direction", "Direction", numeric=False),
        Column("metric", "Metric", numeric=False), Column("value", "Value"), Column("baseline_value", "Baseline"),
        Column("change_pct", "Change", "%"), Column("ci_low_pct", "CI low", "%"), Column("ci_high_pct", "CI high", "%"),
        Column("verdict", "Verdict", numeric=False), Column("n", "n")],
        marked=lambda r: r.get("verdict") in ("slower", "faster"),
        caption="Units of value and baseline: ms for times, GB/s for bandwidth, 1/s for throughput."))
    s.findings += C.comparison_findings(frame, keys, batch=found.batch, figure=fig, table="tab-compare")
    return s


# -- NUMA ------------------------------------------------------------------------------------------------------------------
def numa_section(found: Analyses, draw: Figures) -> Section:
    s = Section("numa", "NUMA placement",
                intro="Penalty = remote node / the GPU's local node − 1, for runs that differ only in their NUMA node.")
    out = found["numa"]
    s.missing += out.missing("The NUMA penalty") if out.error else []
    notes = list(out.notes)
    tested = [r.remote_placement_tested for r in found.studies.records if r.remote_placement_tested is not None]
    runner_notes = [n for r in found.studies.records for n in r.notes if "remote placement" in n]
    frame = out.frame
    if frame.is_empty():
        reasons = runner_notes or notes or ([out.error] if out.error else [])
        s.findings += C.numa_findings(frame, [r.removeprefix("remote placement could not be tested: ")
                                              for r in reasons])
        if tested and not any(tested):
            s.notes.append("The study's summary records remote_placement_tested = false.")
        return s
    s.notes += notes
    fig = draw.add(s, "fig-numa", "NUMA penalty", "numa_penalty_heatmap", out.result)
    pair = frame.columns[: frame.columns.index("local_numa")]
    rows = frame.filter(pl.col("statistic") == "mean")
    s.tables.append(table("tab-numa", "NUMA penalty per pair group and stage (means)", rows, [
        *key_columns(pair), Column("local_numa", "Local node"), Column("remote_numa", "Remote node"),
        Column("stage", "Stage", numeric=False), Column("direction", "Direction", numeric=False),
        Column("metric", "Metric", numeric=False), Column("local_value", "Local"), Column("remote_value", "Remote"),
        Column("penalty_pct", "Penalty", "%"), Column("ci_low_pct", "CI low", "%"),
        Column("ci_high_pct", "CI high", "%"), Column("verdict", "Verdict", numeric=False)],
        marked=lambda r: r.get("verdict") in ("slower", "faster")))
    s.findings += C.numa_findings(frame, notes, figure=fig, table="tab-numa")
    return s


# -- Distributed ----------------------------------------------------------------------------------------------------------------
def distributed_section(found: Analyses, draw: Figures) -> Section:
    s = Section("distributed", "Distributed run: ranks, communication and skew",
                intro=f"{found.ranks} ranks (processes). GPU time per rank counts the work of every thread of the "
                      "rank's process (attribution=process: PyTorch launches backward from its autograd thread).")
    keys = [k for k in found.by if k != "report"]
    lat = found["dist_latency"]
    s.missing += lat.missing("Per-rank latency")
    if not lat.frame.is_empty():
        wanted = [x for x in [found.batch, *found.stages] if x]
        rows = lat.frame.filter(pl.col("range").is_in(wanted)) if wanted else lat.frame
        s.tables.append(table("tab-rank-latency", "Stage latency per rank", rows, [
            *key_columns([*keys, "rank"]), *LATENCY_COLUMNS[:-1]]))
    util = found["dist_utilization"]
    if not util.frame.is_empty():
        s.tables.append(table("tab-rank-util", "GPU utilization per rank", util.frame.with_columns(
            window_ms=pl.col("window_ns") / 1e6), [*key_columns([*keys, "rank"]), *UTIL_COLUMNS]))
    comm = found["comm"]
    s.missing += comm.missing("Communication")
    fig_comm = None
    if not comm.frame.is_empty():
        fig_comm = draw.add(s, "fig-comm", "Communication and compute per rank", "comm_overlap_chart", comm.frame)
        s.tables.append(table("tab-comm", "NCCL communication per rank and collective", comm.frame, [
            Column("report", "Report", numeric=False), Column("rank", "Rank"), Column("device_id", "GPU"),
            Column("collective", "Collective", numeric=False), Column("calls", "Calls"),
            Column("comm_ms", "NCCL time", "ms"), Column("compute_ms", "Compute time", "ms"),
            Column("overlap_ms", "Overlapped", "ms"), Column("exposed_comm_ms", "Exposed", "ms"),
            Column("exposed_pct", "Exposed", "%"), Column("busbw_gbps", "Bus bandwidth", "GB/s")],
            caption="Times are unions of kernel intervals on the rank's GPU; exposed = NCCL time no compute kernel "
                    "overlaps."))
        s.findings += C.comm_findings(comm.frame, figure=fig_comm, table="tab-comm")
    skew, steps, calls = found["skew"], found["skew_steps"], found["calls"]
    s.missing += skew.missing("Skew")
    fig_skew = None
    if not calls.frame.is_empty():
        first = calls.frame["report"][0]
        fig_skew = draw.add(s, "fig-skew", "Arrival skew per NCCL call", "skew_chart",
                            calls.frame.filter(pl.col("report") == first))
    if not skew.frame.is_empty():
        s.tables.append(table("tab-skew", "Arrival at NCCL calls per rank", skew.frame, [
            Column("report", "Report", numeric=False), Column("rank", "Rank"),
            Column("collective", "Collective", numeric=False), Column("calls", "Calls"),
            Column("arrival_late_ms_p50", "Late p50", "ms"), Column("arrival_late_ms_p95", "Late p95", "ms"),
            Column("wait_ms_total", "Waiting", "ms"), Column("straggler_calls", "Arrived last")],
            caption="Late = own kernel start − the first rank's; waiting = time inside the kernel before the last "
                    "rank arrived."))
    if not steps.frame.is_empty():
        s.tables.append(table("tab-steps", "The straggler of each step", steps.frame, [
            Column("report", "Report", numeric=False), Column("step", "Step", numeric=False), Column("calls", "Calls"),
            Column("straggler_rank", "Straggler rank"), Column("straggler_calls", "Its last arrivals"),
            Column("straggler_late_ms_total", "Its lateness", "ms"), Column("max_late_ms", "Max lateness", "ms")]))
    s.findings += C.skew_findings(skew.frame, steps.frame, figure=fig_skew,
                                  table="tab-skew" if not skew.frame.is_empty() else None)
    return s
