"""Damage in an export is detected, never computed through: the checks every query of a report passes.

The views and raw tables a query reads are checked the first time a query of the report reads them
(:meth:`nsysan.load.Report.sql`, :meth:`~nsysan.load.Report.frame`), once per report:

1. **columns**: a present table must have the columns of :data:`nsysan.schema.NEEDS` that the view reads;
   a missing one fails the analysis with one line: the table, the column and what cannot be computed;
2. **rows** (:data:`nsysan.schema.ROW_RULES`), one aggregate query per table: rows with a NULL where nsys
   always writes a value, rows that end before they start, rows outside any possible capture, impossible
   byte counts and rows written twice are counted and left out of the ``raw`` views (the ``source`` views keep
   them), with a one-line warning that gives the counts; when they are more than half of the table the report
   fails instead, since what is left would not mean anything. The same query counts the rows whose name is in
   no StringIds row, and NVTX ranges that never ended;
3. **companions**: a kernel (or copy) table missing although the CUDA trace records launches, or GPU ops
   without the CUDA trace that ties them to ranges: a failure where the numbers would be partial, else a
   warning.

The two largest tables (kernels, CUDA API calls: millions of rows) are not scanned a second time where an
analysis only joins them (:data:`RESULT_CHECKS`): the join's result is checked in memory instead, with the
same rules (GPU ops that lie outside the capture, end before they start, or have no launching call).

Warnings are :class:`~nsysan.errors.NsysanWarning` (the many-report functions turn them into notes) and are
also kept on the report (``report.problems``); failures are :class:`~nsysan.errors.MissingDataError`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from nsysan import schema
from nsysan.errors import MissingDataError, NsysanWarning
from nsysan.sql import query

if TYPE_CHECKING:
    from nsysan.load import Report

#: A byte count beyond this (1 PiB) is no real copy.
MAX_BYTES = 1 << 50
#: How far an event may lie outside [0, stopTime] of ANALYSIS_DETAILS (shares of the capture's length, at least
#: 1 ms / 100 ms): nsys timestamps count from the session's start, and events are seen well before the recorded
#: startTime (NVTX ranges of a CPU capture half a second before it), never before 0 or after the stop.
CAPTURE_SLACK = (0.01, 0.1)
#: Left-out rows beyond this share of a table fail the report.
MAX_DAMAGED_SHARE = 0.5
_REASONS = {"null_values": "with NULL in {cols}", "reversed": "ending before they start",
            "outside": "outside the capture", "impossible_sizes": "with impossible byte counts",
            "duplicated": "duplicated"}
_KERNEL_LAUNCH = "value LIKE 'cu%Launch%Kernel%' OR value LIKE 'cu%GraphLaunch%'"
_CALLS = (("CUPTI_ACTIVITY_KIND_MEMCPY", "value LIKE 'cu%Memcpy%'", "memory-copy"),
          ("CUPTI_ACTIVITY_KIND_MEMSET", "value LIKE 'cu%Memset%'", "memset"))
_VIEW_OF = {"CUPTI_ACTIVITY_KIND_MEMCPY": "memcpy", "CUPTI_ACTIVITY_KIND_MEMSET": "memset"}
_KERNEL = "CUPTI_ACTIVITY_KIND_KERNEL"
_RUNTIME = "CUPTI_ACTIVITY_KIND_RUNTIME"
_OP_TABLES = (_KERNEL, "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET")


# -- entry points ---------------------------------------------------------------------------------------------
def check(report: Report, names: Iterable[str], defer: Iterable[str] = ()) -> None:
    """Check the views and raw tables ``names`` of ``report`` before they are read: the rows of the tables they
    read (but those in ``defer``, checked on a query's result instead), then each view's columns and
    companions. Each check runs once per report; a failure is raised again on every read."""
    for name in names:
        for table in schema.READS.get(name, (name,)):
            if table in schema.ROW_RULES and table not in defer:
                _once(report, f"rows:{table}", lambda: _check_rows(report, table))
        _once(report, name, lambda: _check_view(report, name))


def _once(report: Report, key: str, run: Callable[[], None]) -> None:
    memo = report._checked
    if key not in memo:
        try:
            run()
            memo[key] = None
        except MissingDataError as e:
            memo[key] = e
    if memo[key] is not None:
        raise memo[key]


def require_columns(report: Report, table: str, columns: dict[str, str] | Iterable[str],
                    purpose: str | None = None) -> None:
    """Raise :class:`MissingDataError` when ``table`` is present but lacks one of ``columns`` (a dict says,
    per column, what cannot be computed without it; else ``purpose`` does). A missing table is not checked
    here: nsys leaves out tables without rows (see :meth:`nsysan.load.Report.require`)."""
    if not report.has(table):
        return
    present = report.columns(table)
    for column in columns:
        if column not in present:
            why = columns[column] if isinstance(columns, dict) else (purpose or "this analysis")
            raise MissingDataError(f"{report.path}: {table} has no column {column}: {why} cannot be computed "
                                   "(a damaged or unsupported export; export it again)")


def warn(report: Report, text: str) -> None:
    """A one-line warning about ``report``'s data, kept on the report and raised as an NsysanWarning."""
    if text not in report.problems:
        report.problems.append(text)
    warnings.warn(NsysanWarning(text), stacklevel=4)


# -- views: columns, names, companion tables --------------------------------------------------------------------
def _check_view(report: Report, name: str) -> None:
    for table, columns in schema.NEEDS.get(name, {}).items():
        require_columns(report, table, columns)
    if name == "nvtx_ranges" and report.has("NVTX_EVENTS") and not (
            report.columns("NVTX_EVENTS") & {"text", "textId"}):
        raise MissingDataError(f"{report.path}: NVTX_EVENTS has neither a text nor a textId column: range names "
                               "cannot be read (a damaged export; export it again)")
    if name == "kernels":
        for column in ("demangledName", "shortName"):
            _act_on_names(report, _KERNEL, "kernels", column)
    elif name == "nvtx_ranges":
        _act_on_names(report, "NVTX_EVENTS", "NVTX ranges", "textId")
    if name in ("gpu_ops", "kernels", "memcpy", "memset"):
        _check_lost_tables(report, name)
    for table, lookup, lost in _LOOKUPS.get(name, ()):
        if report.has(table) and not report.has(lookup):
            warn(report, f"{report.path}: no {lookup} table: {lost}")
    if name in ("nvtx_ranges", "kernels", "memcpy", "memset", "gpu_ops"):
        _check_untied_ops(report)


#: Lookup tables a view labels its rows with, and what is lost without one.
_LOOKUPS = {
    "memcpy": (("CUPTI_ACTIVITY_KIND_MEMCPY", "ENUM_CUDA_MEMCPY_OPER", "copy directions are shown as numbers"),
               ("CUPTI_ACTIVITY_KIND_MEMCPY", "ENUM_CUDA_MEM_KIND",
                "memory kinds are shown as numbers and pageable copies are not recognised")),
    "memset": (("CUPTI_ACTIVITY_KIND_MEMSET", "ENUM_CUDA_MEM_KIND", "memory kinds are shown as numbers"),),
}


def _act_on_names(report: Report, table: str, what: str, column: str) -> None:
    """Warn about (or, when none has one, fail on) rows without a name, counted by the table's row check."""
    if not report.has(table):
        return
    _once(report, f"rows:{table}", lambda: _check_rows(report, table))
    total, unnamed = report._checked.get(f"unnamed:{table}.{column}", (0, 0))
    if not unnamed:
        return
    where = "StringIds" if report.has("StringIds") else "StringIds (the export has no StringIds table)"
    if unnamed == total:
        raise MissingDataError(f"{report.path}: none of the {total} {what} has a name in {where} ({table}."
                               f"{column}): names cannot be resolved (a damaged export; export it again)")
    warn(report, f"{report.path}: {unnamed} of {total} {what} have no name in {where} ({table}.{column}): "
                 "they are shown without a name")


def _launch_calls(report: Report, pattern: str) -> int:
    if not report.has(_RUNTIME) or not report.has("StringIds"):
        return 0
    report._ensure(_RUNTIME)
    report._ensure("StringIds")
    return report._con.execute(query("launch_calls").format(pattern=pattern)).fetchone()[0]


def _empty(report: Report, table: str) -> bool:
    if not report.has(table):
        return True
    report._ensure(table)
    return report._con.execute(f'SELECT 1 FROM raw."{table}" LIMIT 1').fetchone() is None


def _check_lost_tables(report: Report, name: str) -> None:
    """A kernel table missing (or empty) although the CUDA trace launched kernels fails: GPU times would be
    built from copies alone. A copy or memset table missing although the trace called them is a warning."""
    if name in ("gpu_ops", "kernels") and _empty(report, _KERNEL):
        launched = _launch_calls(report, _KERNEL_LAUNCH)
        if launched:
            state = "an empty" if report.has(_KERNEL) else "no"
            raise MissingDataError(
                f"{report.path}: {state} {_KERNEL} table although the CUDA trace records {launched} kernel launches: "
                "GPU times would count copies only (a damaged export; export it again)")
    for table, pattern, what in _CALLS:
        if name in ("gpu_ops", _VIEW_OF[table]) and _empty(report, table):
            called = _launch_calls(report, pattern)
            if called:
                state = "an empty" if report.has(table) else "no"
                warn(report, f"{report.path}: {state} {table} table although the CUDA trace records {called} {what} "
                             "calls: they are missing from the results")


def traced(report: Report, what: str) -> bool:
    """Whether the capture's own record (META_DATA_CAPTURE, nsys 2023+) says it traced ``what`` (``NVTX``,
    ``CUDA``) for some process."""
    if not report.has("META_DATA_CAPTURE"):
        return False
    report._ensure("META_DATA_CAPTURE")
    return report._con.execute("SELECT count(*) FROM raw.META_DATA_CAPTURE WHERE name LIKE ? AND value = 'true'",
                               [f"%COLLECT_{what}_TRACE"]).fetchone()[0] > 0


def warn_unselectable(report: Report, patterns: Iterable[str], ranges: int) -> None:
    """GPU work is to be left out when launched inside ranges named like ``patterns`` (warm-up), but the export
    cannot tell which ranges launched it: it has ranges but no CUDA trace, or it has none although the capture
    traced NVTX (a program without NVTX ranges has no warm-up to leave out: nothing to say). Once, one line."""
    if ranges and not report.has(_RUNTIME):
        why = f"no CUDA API trace ({_RUNTIME}) ties GPU work to NVTX ranges"
    elif not ranges and traced(report, "NVTX"):
        why = "the capture traced NVTX (META_DATA_CAPTURE) but the export holds no NVTX ranges"
    else:
        return
    warn(report, f"{report.path}: GPU work launched inside {', '.join(patterns)} cannot be left out: {why} "
                 "(--all-instances keeps everything without this warning)")


def _check_untied_ops(report: Report) -> None:
    if report.has("NVTX_EVENTS") and not report.has(_RUNTIME) and any(report.has(t) for t in _OP_TABLES):
        warn(report, f"{report.path}: GPU ops but no CUDA API trace ({_RUNTIME}): GPU work cannot be tied to the "
                     "NVTX ranges that launched it (no GPU projection; warm-up GPU work is not left out)")


# -- rows -------------------------------------------------------------------------------------------------------
def capture_bounds(report: Report) -> tuple[int, int] | None:
    """The span every event must lie in: from the session's start (or ANALYSIS_DETAILS's start time, if
    earlier) to its stop time, widened by CAPTURE_SLACK; None when the export does not record it (or records
    nonsense)."""
    if "bounds" not in report._checked:
        bounds = None
        if report.has("ANALYSIS_DETAILS"):
            report._ensure("ANALYSIS_DETAILS")
            lo, hi = report._con.execute(
                'SELECT min("startTime"), max("stopTime") FROM raw."ANALYSIS_DETAILS"').fetchone()
            if lo is not None and hi is not None and hi > lo:
                before, after = CAPTURE_SLACK
                bounds = (min(lo, 0) - max(int((hi - lo) * before), 1_000_000),
                          hi + max(int((hi - lo) * after), 100_000_000))
        report._checked["bounds"] = bounds
    return report._checked["bounds"]


def _problem(report: Report, table: str, rules: schema.RowRules) -> tuple[str, list[str]]:
    """The SQL expression naming a row's damage (``'null'``, ``'reversed'``, ``'outside'``, ``'size'``) or
    NULL, and the never-NULL columns it tests."""
    present = report.columns(table)
    nulls = [c for c in rules.never_null if c in present]
    cases = []
    if nulls:
        cases.append(f"WHEN {' OR '.join(f't.{_q(c)} IS NULL' for c in nulls)} THEN 'null'")
    if rules.times and {"start", "end"} <= present:
        cases.append("WHEN t.\"end\" < t.start THEN 'reversed'")
        bounds = capture_bounds(report)
        if bounds is not None:
            lo, hi = bounds
            cases.append(f"WHEN t.start < {lo} OR t.start > {hi} OR coalesce(t.\"end\", t.start) > {hi} "
                         "THEN 'outside'")
    sizes = [c for c in rules.sizes if c in present]
    if sizes:
        cases.append(f"WHEN {' OR '.join(f't.{_q(c)} < 0 OR t.{_q(c)} > {MAX_BYTES}' for c in sizes)} "
                     "THEN 'size'")
    return (f"CASE {' '.join(cases)} END" if cases else "CAST(NULL AS VARCHAR)"), nulls


@dataclass(frozen=True)
class _Names:
    """How a table's rows are named through StringIds: which id columns, and the row's own text if any."""

    columns: tuple[str, ...]
    rows: str = "true"
    text: str | None = None


_NAMED = {_KERNEL: _Names(("demangledName", "shortName")),
          "NVTX_EVENTS": _Names(("textId",), f"t.eventType IN {schema.RANGE_EVENT_TYPES}", "text")}


def _check_rows(report: Report, table: str) -> None:
    if not report.has(table):
        return
    report._ensure(table)
    rules = schema.ROW_RULES[table]
    problem, nulls = _problem(report, table, rules)
    columns = [_q(c) for c in (rules.key or tuple(schema.RAW_TABLES[table]))]
    nvtx = table == "NVTX_EVENTS"
    ranges = f"t.eventType IN {schema.RANGE_EVENT_TYPES}" if nvtx else "false"
    unended = f"{ranges} AND t.\"end\" IS NULL" if nvtx and "end" in report.columns(table) else "false"
    names, unnamed, named = "", "", _NAMED.get(table)
    if named is not None:
        report._ensure("StringIds")
        _once(report, "rows:StringIds", lambda: _check_rows(report, "StringIds"))
        text = f"t.{_q(named.text)}" if named.text and named.text in report.columns(table) else "NULL"
        for i, column in enumerate(named.columns):
            names += f" LEFT JOIN raw.StringIds AS s{i} ON s{i}.id = t.{_q(column)}"
            unnamed += (f", count(*) FILTER (WHERE t._problem IS NULL AND {named.rows})"
                        f", count(*) FILTER (WHERE t._problem IS NULL AND {named.rows} AND {text} IS NULL"
                        f" AND s{i}.value IS NULL)")
    null_columns = "".join(f", count(*) FILTER (WHERE t.{_q(c)} IS NULL)" for c in nulls)
    counts = report._con.execute(query("row_problems").format(
        table=table, problem=problem, key=f"hash({', '.join(f't.{c}' for c in columns)})", unended=unended,
        ranges=ranges, null_columns=null_columns, names=names, unnamed=unnamed)).fetchone()
    total, *damage = counts[:len(_REASONS) + 1]
    unended_rows, range_rows, *rest = counts[len(_REASONS) + 1:]
    if named is not None:
        for i, column in enumerate(named.columns):
            report._checked[f"unnamed:{table}.{column}"] = (rest[2 * i], rest[2 * i + 1])
        rest = rest[2 * len(named.columns):]
    found = dict(zip(_REASONS, damage))
    left_out = sum(found.values())
    if left_out:
        with_nulls = ", ".join(c for c, n in zip(nulls, rest) if n)
        details = ", ".join(f"{n} {_REASONS[k].format(cols=with_nulls)}" for k, n in found.items() if n)
        if left_out > total * MAX_DAMAGED_SHARE:
            raise MissingDataError(f"{report.path}: {left_out} of {total} {rules.what} ({table}) are damaged "
                                   f"({details}): too many to leave out; export it again")
        dedupe = (f"QUALIFY row_number() OVER (PARTITION BY {', '.join(f't.{c}' for c in columns)} ORDER BY _row) = 1"
                  if found["duplicated"] else "")
        report._keep_source(table)
        report._con.execute(f'CREATE OR REPLACE VIEW raw."{table}" AS ' + query("clean_rows").format(
            table=table, problem=problem, dedupe=dedupe))
        warn(report, f"{report.path}: {table}: {left_out} of {total} {rules.what} left out ({details})")
    if unended_rows:
        if unended_rows > range_rows * MAX_DAMAGED_SHARE:
            raise MissingDataError(f"{report.path}: {unended_rows} of {range_rows} NVTX ranges have no end time: "
                                   "range times cannot be computed (a damaged export; export it again)")
        warn(report, f"{report.path}: {unended_rows} of {range_rows} NVTX ranges never ended: they are taken "
                     "to end at the last NVTX timestamp of the capture")


# -- results checked in memory ------------------------------------------------------------------------------------
def _checked_launches(report: Report, launches: pl.DataFrame) -> pl.DataFrame:
    """launches.sql's rows (every GPU op, with its launching call where one matched) without the damaged
    ones: an op with NULL or reversed times or outside the capture, or whose call is; an op without a call
    when the export has a CUDA trace (without one, no op has its call: nothing to say here)."""
    bounds = capture_bounds(report)
    outside = pl.lit(False)
    if bounds is not None:
        lo, hi = bounds
        outside = pl.any_horizontal(*[~pl.col(c).is_between(lo, hi) for c in ("op_start", "op_end", "call_start",
                                                                                "call_end")])
    traced = report.has(_RUNTIME)
    problem = (pl.when(pl.col("op_start").is_null() | pl.col("op_end").is_null()).then(pl.lit("with NULL times"))
               .when(pl.col("call_start").is_null()).then(pl.lit("without a launching CUDA call" if traced else None))
               .when(pl.col("call_end").is_null()).then(pl.lit("whose CUDA call has NULL times"))
               .when(pl.col("op_end") < pl.col("op_start")).then(pl.lit("ending before they start"))
               .when(pl.col("call_end") < pl.col("call_start")).then(pl.lit("whose CUDA call ends before it starts"))
               .when(outside.fill_null(False)).then(pl.lit("outside the capture")))
    flagged = launches.with_columns(_problem=problem)
    counts = flagged.filter(pl.col("_problem").is_not_null())["_problem"].value_counts(sort=True)
    kept = flagged.filter(pl.col("_problem").is_null() & pl.col("call_start").is_not_null()).drop("_problem")
    if counts.height:
        left_out, total = int(counts["count"].sum()), launches.height
        details = ", ".join(f"{n} {why}" for why, n in counts.iter_rows())
        what = f"GPU ops (kernels, copies and memsets: {', '.join(_OP_TABLES)} with {_RUNTIME})"
        if left_out > total * MAX_DAMAGED_SHARE:
            raise MissingDataError(f"{report.path}: {left_out} of {total} {what} are damaged ({details}): too many "
                                   "to leave out; export it again")
        warn(report, f"{report.path}: {left_out} of {total} {what} left out ({details})")
    return kept


def _checked_copies(report: Report, copies: pl.DataFrame) -> pl.DataFrame:
    """copies.sql's rows: a copy without its launching call (when the export has a CUDA trace) is kept, but
    whether it was asynchronous is unknown: said in a warning."""
    if report.has(_RUNTIME) and copies.height:
        untied = copies["api"].null_count()
        if untied:
            warn(report, f"{report.path}: {untied} of {copies.height} copies and memsets have no launching CUDA call "
                         f"in {_RUNTIME}: whether they were asynchronous is unknown")
    return copies


@dataclass(frozen=True)
class ResultCheck:
    """A query whose result is checked in memory: the tables it joins are not scanned a second time."""

    deferred: tuple[str, ...]
    check: Callable[[Report, pl.DataFrame], pl.DataFrame]


#: Queries (by their text) whose results are checked in memory instead of the row checks of ``deferred``.
RESULT_CHECKS = {query("launches"): ResultCheck((_KERNEL, _RUNTIME), _checked_launches),
                 query("copies"): ResultCheck((_RUNTIME,), _checked_copies),
                 # The mode of a process's devices: a minority of damaged kernel rows cannot move it, and the
                 # analyses that read the kernels check them (through launches) without a scan of their own.
                 query("process_devices"): ResultCheck((_KERNEL,), lambda report, frame: frame)}


def _q(column: str) -> str:
    return f'"{column}"'
