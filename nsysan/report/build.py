"""The report's sections, built from one :class:`~nsysan.report.data.Analyses`: tables, figures and findings.

Each ``_section`` function reads only the analyses' frames; figures come from :mod:`nsysan.plots` and are
encoded at once (SVG, or PNG where an SVG would be too heavy), so that the figure objects are freed as the
report is built. A section that lacks its data says so in ``missing``.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

import nsysan
from nsysan.render import format_number
from nsysan.report import findings as F
from nsysan.report.data import Analyses, analyse
from nsysan.report.model import Column, Figure, Page, Section, Table
from nsysan.selection import DEFAULT, Selection

FIGURE_FORMATS = ("svg", "png")
#: An SVG larger than this is embedded as a PNG instead (a timeline of thousands of bars).
MAX_SVG_BYTES = 1_500_000
PNG_DPI = 110


# -- cells and tables ------------------------------------------------------------------------------------------
def cell(value: Any) -> str:
    """A table cell as text: numbers with the digits that matter, integers with thousands separators,
    yes/no, and an em dash for a missing value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.0f}" if abs(value) >= 1000 else format_number(value)
    return " ".join(str(value).split())


def table(id: str, title: str, frame: pl.DataFrame, columns: Sequence[Column], *, caption: str = "",  # noqa: A002
          marked: Callable[[dict[str, Any]], bool] | None = None, limit: int = 400) -> Table:
    """``frame``'s ``columns`` (those it has) as a :class:`Table`; at most ``limit`` rows (the caption says
    when rows were left out)."""
    shown = [c for c in columns if c.key in frame.columns]
    rows, flagged = [], set()
    for i, row in enumerate(frame.head(limit).iter_rows(named=True)):
        rows.append([cell(row[c.key]) for c in shown])
        if marked and marked(row):
            flagged.add(i)
    if frame.height > limit:
        caption = (caption + " " if caption else "") + f"First {limit} of {frame.height:,} rows."
    return Table(id=id, title=title, columns=list(shown), rows=rows, caption=caption, marked=flagged)


def key_columns(keys: Sequence[str]) -> list[Column]:
    return [Column(k, k.replace("_", " "), numeric=False) for k in keys]


# -- figures -----------------------------------------------------------------------------------------------------
def encode(fig: Any, *, fmt: str = "svg") -> tuple[str, bytes, int, int]:
    """(mime type, bytes, width px, height px) of a matplotlib figure; SVG falls back to PNG when large."""
    width, height = (int(round(v * 96)) for v in fig.get_size_inches())
    if fmt == "svg":
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        data = buffer.getvalue()
        if len(data) <= MAX_SVG_BYTES:
            return "image/svg+xml", data, width, height
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return "image/png", buffer.getvalue(), width, height


def data_url(figure: Figure) -> str:
    return f"data:{figure.mime};base64,{base64.b64encode(figure.data).decode()}"


def render_figure(kind: str, args: tuple, kwargs: dict[str, Any], fmt: str | None) -> tuple[str, Any]:
    """Draw ``nsysan.plots.<kind>(*args, **kwargs)`` and encode it: ("ok", (mime, bytes, width, height)) or
    ("error", why); with ``fmt`` None, ("ok", the call's value). Runs in a worker process (everything here is
    picklable) or in the caller's."""
    from nsysan import plots

    try:
        fig = getattr(plots, kind)(*args, **kwargs)
        if fmt is None:  # a frame re-arrangement of nsysan.plots (transfer_share, model_shape), not a figure
            return "ok", fig
        encoded = encode(fig, fmt=fmt)
        fig.clear()
        return "ok", encoded
    except (ValueError, KeyError, nsysan.NsysanError) as e:
        return "error", str(e)
    except Exception as e:  # noqa: BLE001 - a bug in one figure must not cost the whole report
        return "error", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


class _Worker:
    """One ``python -m nsysan.report.worker`` child; :meth:`run` sends a job and waits for its answer."""

    def __init__(self) -> None:
        import subprocess
        import sys

        # the worker imports the same nsysan as this process, wherever that comes from
        here = os.path.dirname(os.path.dirname(os.path.abspath(nsysan.__file__)))
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "nsysan.report.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})

    def run(self, job: tuple) -> tuple[str, Any]:
        from nsysan.report.worker import receive, send

        send(self.proc.stdin, job)
        return receive(self.proc.stdout)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a worker that will not stop is killed
            self.proc.kill()
            self.proc.wait()


class _Now:
    """A finished call, shaped like a future."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class Figures:
    """Draws the report's figures: in ``workers`` child processes (default two on a machine with two cores or
    more, started before the analyses so that they import matplotlib meanwhile; :mod:`nsysan.report.worker`) or
    in this one (``workers=0``). A figure that cannot be drawn becomes a sentence of its section."""

    def __init__(self, fmt: str = "svg", workers: int | None = None) -> None:
        if fmt not in FIGURE_FORMATS:
            raise nsysan.NsysanError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.jobs: list[tuple[Section, Figure, Any]] = []
        count = workers if workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 0)
        self.workers: list[_Worker] = []
        self.pool = None
        if count > 0:
            import queue
            from concurrent.futures import ThreadPoolExecutor

            self.workers = [_Worker() for _ in range(count)]
            self.idle: queue.Queue[_Worker] = queue.Queue()
            for worker in self.workers:
                self.idle.put(worker)
            self.pool = ThreadPoolExecutor(count)

    def _remote(self, job: tuple) -> tuple[str, Any]:
        worker = self.idle.get()
        try:
            return worker.run(job)
        finally:
            self.idle.put(worker)

    def add(self, section: Section, id: str, title: str, kind: str, *args: Any, caption: str = "",  # noqa: A002
            **kwargs: Any) -> str:
        """Queue ``nsysan.plots.<kind>(*args, **kwargs)`` as figure ``id`` of ``section``; returns ``id``."""
        job = self.pool.submit(self._remote, (kind, args, kwargs, self.fmt)) if self.pool else \
            _Now(render_figure(kind, args, kwargs, self.fmt))
        slot = Figure(id=id, title=title, mime="", data=b"", caption=caption)
        section.figures.append(slot)
        self.jobs.append((section, slot, job))
        return id

    def call(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        """``nsysan.plots.<kind>(*args, **kwargs)`` for a pure helper of the plots (``transfer_share``,
        ``model_shape``), computed where matplotlib is already imported (a worker), so this process never
        imports it. Raises what the helper raised, as a ValueError."""
        job = (kind, args, kwargs, None)
        status, value = self._remote(job) if self.pool else render_figure(*job)
        if status != "ok":
            raise ValueError(value)
        return value

    def finish(self) -> set[str]:
        """Wait for every figure; returns the ids of those that could not be drawn."""
        failed = set()
        try:
            for section, slot, job in self.jobs:
                try:
                    status, value = job.result()
                except Exception as e:  # noqa: BLE001 - a worker that died
                    status, value = "error", f"{type(e).__name__}: {e}"
                if status == "ok":
                    slot.mime, slot.data, slot.width_px, slot.height_px = value
                else:
                    section.figures.remove(slot)
                    section.missing.append(f"The figure “{slot.title}” could not be drawn: {value}")
                    failed.add(slot.id)
        finally:
            self.close()
        return failed

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        for worker in self.workers:
            worker.close()
        self.workers = []


def _plots() -> Any:
    from nsysan import plots

    return plots


# -- the page ----------------------------------------------------------------------------------------------------
def build_report(runs: Any, *, by: Sequence[str] | None = None, select: Selection = DEFAULT,
                 baseline: dict[str, Any] | None = None, attribution: str = "auto",
                 stats: dict[str, Any] | None = None, title: str | None = None, figures: str = "svg",
                 inputs: Sequence[Any] = (), step: Callable[[str], None] | None = None,
                 workers: int | None = None) -> Page:
    """The report of ``runs`` (paths, folders, a study folder, or a :class:`~nsysan.collection.Collection`) as a
    :class:`~nsysan.report.model.Page`: what was run, findings, and one section per analysis.

    ``by``: grouping keys (default: ``model`` and the metadata keys that vary, else ``report``); ``baseline``:
    the comparison's baseline group as in :func:`nsysan.compare` (default: each model's variants against the
    run without a variant); ``attribution``: as in :func:`nsysan.latency`, or ``auto`` (``thread``, nsys's rule, unless other threads
    launched some ranges' GPU work: then ``process``); ``stats``: options of
    :func:`nsysan.compare` (confidence, resamples, seed, min_effect_pct, adjust, block); ``figures``:
    ``svg`` or ``png``; ``workers``: processes that draw the figures (default two where there are two cores,
    0: in this process); ``inputs``: the paths the user gave (where study records are looked for; default the
    runs' own paths)."""
    from pathlib import Path

    given = [Path(p) for p in inputs] or ([Path(runs)] if isinstance(runs, (str, Path)) else
                                          [Path(p) for p in runs] if isinstance(runs, (list, tuple)) else [])
    draw = Figures(figures, workers=workers)  # workers start importing matplotlib while the analyses run
    try:
        found = analyse(runs, inputs=given, by=by, select=select, attribution=attribution, baseline=baseline,
                        stats=stats, step=step)
        sections = _sections(found, draw)
        if step:
            step("figures")
        failed = draw.finish()
    finally:
        draw.close()
    for section in sections:  # a finding never points to a figure that could not be drawn
        section.findings = [dataclasses.replace(f, figure=None) if f.figure in failed else f for f in section.findings]
    _number(sections)
    summary = Section("findings", "Findings", intro="Computed from the numbers below; each points to its evidence.")
    summary.findings = [f for s in sections for f in s.findings]
    if not summary.findings:
        summary.missing.append("Nothing could be computed from these inputs (see What was run).")
    return Page(title=title or _title(found), subtitle=_subtitle(found),
                generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                sections=[summary, *sections], facts=_facts(found),
                meta={"seconds": {k: round(v.seconds, 3) for k, v in found.outcomes.items()},
                      "unreadable": list(found.unreadable), "exports": len(found.collection)})


def _sections(found: Analyses, draw: Figures) -> list[Section]:
    sections = [_runs(found), _stages(found, draw), _throughput(found, draw), _bandwidth(found, draw),
                _flags(found), _utilization(found, draw), _kernels(found, draw), _compare(found, draw),
                _numa(found, draw)]
    if found.distributed:
        sections.append(_distributed(found, draw))
    sections.append(_timeline(found, draw))
    sections.append(_notes(found))
    return sections


def _number(sections: list[Section]) -> None:
    figure = table_no = 0
    for section in sections:
        for f in section.figures:
            figure += 1
            f.number = figure
        for t in section.tables:
            table_no += 1
            t.number = table_no


def _title(found: Analyses) -> str:
    experiments = [s.experiment for s in found.studies.records if s.experiment]
    if experiments:
        return f"nsysan report: {', '.join(dict.fromkeys(experiments))}"
    if len(found.collection) == 1:
        return f"nsysan report: {found.collection.names[found.collection.paths[0]]}"
    return f"nsysan report: {len(found.collection)} exports"


def _subtitle(found: Analyses) -> str:
    n = len(found.collection)
    text = f"{found.analysed} of {n} export(s) analysed" if found.unreadable else f"{n} export(s)"
    return f"{text}, grouped by {', '.join(found.by)}; {found.select.describe()}"


def _facts(found: Analyses) -> list[tuple[str, str]]:
    facts = [("Exports", f"{len(found.collection)} ({found.analysed} analysed)"),
             ("Grouped by", ", ".join(found.by)), ("Instances", found.select.describe()),
             ("GPU time attribution", found.attribution)]
    info = found["info"].frame
    if not info.is_empty():
        facts.append(("nsys (exports)", ", ".join(sorted(set(info["nsys_version"].drop_nulls().to_list()))) or "—"))
    facts.append(("nsysan", nsysan.__version__))
    return facts


# -- What was run -------------------------------------------------------------------------------------------------
def _runs(found: Analyses) -> Section:
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
                       f"({F.listing(no_export)}): run `nsysan export` on the study folder to include them.")
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


def _stages(found: Analyses, draw: Figures) -> Section:
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
def _scaling_axis(latency: pl.DataFrame, draw: Figures | None = None) -> str | None:
    """The model-shape key a scaling figure can use: one along which some series (models equal in the other
    shape keys and variant) has at least three points."""
    if "model" not in latency.columns:
        return None
    models = latency.select("model", *(["variant"] if "variant" in latency.columns else [])).unique()
    shapes = draw.call("model_shape", models) if draw is not None else _plots().model_shape(models)
    shapes = shapes.filter(pl.col("depth").is_not_null(), pl.col("patch") > 0)
    for x in ("depth", "dim", "patch"):
        others = [k for k in ("patch", "depth", "dim", "variant") if k != x and k in shapes.columns]
        if not shapes.is_empty() and shapes.group_by(others).agg(pl.col(x).n_unique())[x].max() >= 3:
            return x
    return None


def _throughput(found: Analyses, draw: Figures) -> Section:
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
        shares = draw.call("transfer_share", latency)
    except ValueError as e:
        s.missing.append(f"Transfer and compute GPU time could not be computed: {e}")
        return s
    s.tables.append(table("tab-transfer-share", "Transfer and compute GPU time per batch", shares, [
        *key_columns(keys), Column("transfer_ms", "Transfer (h2d + d2h) GPU", "ms"),
        Column("compute_ms", "Compute (forward) GPU", "ms"), Column("transfer_share_pct", "Transfer share", "%")],
        caption="Means per batch of the stages' projected GPU time."))
    try:
        x = _scaling_axis(latency, draw)
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


def _bandwidth(found: Analyses, draw: Figures) -> Section:
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
def _flags(found: Analyses) -> Section:
    s = Section("flags", "What nsysan flags",
                intro="Pageable memory in asynchronous copies, groups of tiny copies, and launch-bound windows.")
    keys = list(found.by)
    rows = []
    staged = found["bandwidth_stage"].frame
    if not staged.is_empty():
        for r in staged.filter(pl.col("flags").is_not_null()).iter_rows(named=True):
            where = f"{r.get('stage') or '(no range)'} · {r['direction']} {r['src_kind'] or '—'} → {r['dst_kind'] or '—'}"
            rows.append({"flag": "copies", "group": F.group_name(r, keys), "where": where, "evidence": r["flags"],
                         "value": f"{cell(r['bandwidth_gbps'])} GB/s over {r['copies']:,} copies"})
    util = found["utilization"].frame
    if not util.is_empty():
        for r in util.filter(pl.col("launch_bound")).iter_rows(named=True):
            rows.append({"flag": "launch-bound", "group": F.group_name(r, keys),
                         "where": f"GPU {r['device_id']} over {r['window']}",
                         "evidence": f"idle {F.pct(r['idle_pct'])} of the window, {F.pct(r['launch_gap_idle_pct'])} of it "
                                     "in gaps < 100 µs",
                         "value": f"utilization {F.pct(r['utilization_pct'])}"})
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


def _utilization(found: Analyses, draw: Figures) -> Section:
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
def _kernels(found: Analyses, draw: Figures) -> Section:
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


# -- Comparisons ------------------------------------------------------------------------------------------------------------
def _compare(found: Analyses, draw: Figures) -> Section:
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
    s.findings += F.comparison_findings(frame, keys, batch=found.batch, figure=fig, table="tab-compare")
    return s


# -- NUMA ------------------------------------------------------------------------------------------------------------------
def _numa(found: Analyses, draw: Figures) -> Section:
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
        s.findings += F.numa_findings(frame, [r.removeprefix("remote placement could not be tested: ")
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
    s.findings += F.numa_findings(frame, notes, figure=fig, table="tab-numa")
    return s


# -- Distributed ----------------------------------------------------------------------------------------------------------------
def _distributed(found: Analyses, draw: Figures) -> Section:
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
        s.findings += F.comm_findings(comm.frame, figure=fig_comm, table="tab-comm")
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
    s.findings += F.skew_findings(skew.frame, steps.frame, figure=fig_skew,
                                  table="tab-skew" if not skew.frame.is_empty() else None)
    return s


# -- Timeline --------------------------------------------------------------------------------------------------------------------
def _timeline(found: Analyses, draw: Figures) -> Section:
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
def _notes(found: Analyses) -> Section:
    s = Section("notes", "Notes and definitions")
    seen = dict.fromkeys(n for o in found.outcomes.values() for n in o.notes)
    s.notes = [*found.notes, *seen]
    s.intro = ("Definitions of every column: docs/metrics.md of nsysan. Numbers are over the measured instances "
               f"({found.select.describe()}). Each section's table is also available from the command line "
               "(nsysan latency, throughput, bandwidth, utilization, compare, numa, comm, skew) as CSV or JSON.")
    return s


__all__ = ["Figures", "build_report", "cell", "encode", "table"]
