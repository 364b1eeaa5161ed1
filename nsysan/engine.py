"""The one path every many-report function of :mod:`nsysan.api` takes: per-report frames, pooled.

    result = pooled(runs, partial(latency.instances, select=select),
                    pool=partial(latency.latency_summary, by=("model",), select=select),
                    by=("model",), row_keys=latency.ROW_KEYS)

1. ``runs`` becomes a :class:`~nsysan.collection.Collection` (paths, folders, a collection, or open reports).
   Run metadata of every report is read first (names and sidecars: cheap), so that a grouping key that no
   report has fails at once, before any report is opened;
2. each report is opened once and ``per_report(report)`` gives its tidy frame, tagged with ``report`` and the
   report's metadata columns; derived tables that several steps need are memoised on the open report
   (:func:`nsysan.load.derived`);
3. a report that cannot be read or analysed becomes a :class:`~nsysan.collection.Failure` (one line naming the
   file and the problem) and the others go on: an :class:`NsysanError`, and whatever reading a damaged export
   raises (DuckDB, SQLite, Arrow and OS errors; never a traceback); warnings an analysis raises
   (:class:`NsysanWarning`) and the data problems the report's checks found (:mod:`nsysan.quality`) become
   notes, prefixed with the report;
4. the frames are stacked and ``pool(frame)`` summarises them.

The input collection is never changed: failures and notes travel in the :class:`Result`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import polars as pl

from nsysan.collection import Collection, Failure, collect
from nsysan.errors import NsysanError, NsysanWarning
from nsysan import cache, parallel, ranks
from nsysan.files import brief, reason
from nsysan.load import Report

#: A stack of reports is cached only when its frame is at most this fraction of the cache's size bound.
STACK_SHARE = 8

Runs = Union[Collection, Report, str, os.PathLike, Iterable[Union[str, os.PathLike, Report]]]
Progress = Callable[[Path], None] | None


@dataclass(frozen=True)
class Result:
    """What a many-report analysis returns: the tidy ``frame`` (columns documented by each function),
    the reports that ``failures`` kept out of it, and ``notes``: plain sentences about the result (rows an
    analysis left out and why, what could not be computed)."""

    frame: pl.DataFrame
    failures: tuple[Failure, ...] = ()
    notes: tuple[str, ...] = ()
    analysed: int = 0

    @property
    def ok(self) -> bool:
        """True when every report was analysed."""
        return not self.failures

    def with_frame(self, frame: pl.DataFrame, *notes: str) -> Result:
        return Result(frame, self.failures, (*self.notes, *notes), self.analysed)

    def __repr__(self) -> str:
        lines = [repr(self.frame)]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"failed: {f.reason}" for f in self.failures]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        extra = "".join(f"<p>note: {escape(n)}</p>" for n in self.notes)
        extra += "".join(f"<p>failed: {escape(f.reason)}</p>" for f in self.failures)
        return self.frame._repr_html_() + extra


@dataclass
class Inputs:
    """The reports of one call: a collection, and those of them the caller holds open."""

    collection: Collection
    opened: dict[Path, Report] = field(default_factory=dict)


def inputs(runs: Runs | Inputs) -> Inputs:
    """What ``runs`` names, found once (a generator of paths is read once; call this to reuse it)."""
    if isinstance(runs, Inputs):
        return runs
    if isinstance(runs, Collection):
        return Inputs(runs)
    if isinstance(runs, Report):
        return Inputs(Collection((runs.path,)), {runs.path: runs})
    if isinstance(runs, (str, os.PathLike)):
        return Inputs(collect(runs))
    items = list(runs)
    opened = {item.path: item for item in items if isinstance(item, Report)}
    paths = [item for item in items if not isinstance(item, Report)]
    found = collect(paths) if paths else Collection(())
    return Inputs(Collection((*found.paths, *opened)), opened)


def check_keys(by: Sequence[str], collection: Collection, row_keys: Sequence[str] = ()) -> None:
    """Fail with one line when a grouping key is neither ``report``, a metadata key of some report, nor a
    per-row key the analysis provides."""
    if isinstance(by, str):
        raise NsysanError(f"by takes a sequence of keys, e.g. by=[{by!r}], not the string {by!r}")
    known = [*collection.keys, *row_keys, *(k for k in ranks.KEYS if "pid" in row_keys and k not in row_keys)]
    missing = [k for k in by if k not in known]
    if missing:
        raise NsysanError(f"unknown grouping key(s) {', '.join(missing)}; keys here: {', '.join(known)}")


def pooled(runs: Runs | Inputs, per_report: Callable[[Report], pl.DataFrame], *,
           pool: Callable[[pl.DataFrame], pl.DataFrame] | None = None, by: Sequence[str] = ("report",),
           row_keys: Sequence[str] = (), progress: Progress = None, pools_ranks: bool = False) -> Result:
    """Apply ``per_report`` to every report of ``runs``, tag and stack the frames, then ``pool`` them
    (steps of the module doc). An empty stack is returned as it is, without pooling. Unless the pooling
    function itself combines ranks (``pools_ranks``), a note says when groups pool the ranks of a report."""
    found = inputs(runs)
    check_keys(by, found.collection, row_keys)
    frame, failures, notes = _stacked(found, per_report, progress)
    if pool is not None and not frame.is_empty():
        notes += [] if pools_ranks else _pooled_ranks(frame, by)
        frame = pool(frame)
    return Result(frame, tuple(failures), tuple(notes), len(found.collection) - len(failures))


def _pooled_ranks(frame: pl.DataFrame, by: Sequence[str]) -> list[str]:
    """A note when a group pools the ranks (processes) of a distributed report without being asked to."""
    if "rank" not in frame.columns or set(ranks.SEPARATING) & set(by) or "report" not in frame.columns:
        return []
    if frame["rank"].n_unique() < 2:  # the usual case, found without grouping every row by report
        return []
    several = frame.group_by("report").agg(pl.col("rank").n_unique().alias("ranks")).filter(pl.col("ranks") > 1)
    if several.is_empty():
        return []
    return [f"{several.height} report(s) hold several ranks (processes), pooled here; group by rank "
            f"(by=[..., 'rank'], --by ...,rank) to keep them apart"]


def _stacked(found: Inputs, per_report: Callable[[Report], pl.DataFrame], progress: Progress
             ) -> tuple[pl.DataFrame, list[Failure], list[str]]:
    """The tagged frames of every report stacked, the failures and the notes.

    A stack of several reports is cached too, under a key made of its reports' keys, names and metadata: a
    call on the same reports reads one entry instead of one per report (most of a cached sweep's time was
    reading a hundred small entries); any changed export changes its report's key, and so the stack's."""
    collection = found.collection
    key_of = cache.keyer(per_report) if cache.settings().enabled else None
    keys = {path: key_of(path) if key_of and not isinstance(collection.metadata[path], Failure) and _exists(path)
            else None for path in collection.paths}
    whole = _stack_key(found, keys)
    hit = cache.lookup(whole) if whole else None
    if hit is not None:
        for path in collection.paths:
            _tick(progress, path)
        return hit[0], [], hit[1]
    frames, failures, notes = [], [], []
    for path, outcome, raised in _each(found, per_report, progress, keys):
        notes += raised
        if isinstance(outcome, Failure):
            failures.append(outcome)
        else:
            frames.append(outcome)
    # One plan for all: tagging and stacking report by report cost a query each (~1 ms: most of a cached sweep).
    frame = pl.concat(frames, how="diagonal_relaxed").collect() if frames else pl.DataFrame()
    # A stack that would fill much of the cache (a trace of every instance of a large sweep) would evict the
    # reports' own entries, which it duplicates: those are kept instead.
    if whole and not failures and frame.width and frame.estimated_size() <= cache.settings().max_bytes // STACK_SHARE:
        cache.store(whole, frame, notes)
        cache.prune()
    return frame, failures, notes


def _stack_key(found: Inputs, keys: dict[Path, str | None]) -> str | None:
    """The cache key of the stack of several reports, each of which has a key; None otherwise."""
    collection = found.collection
    if len(keys) < 2 or found.opened or not all(keys.values()):
        return None
    return cache.stack_key([[keys[p], collection.names[p], collection.metadata[p]] for p in collection.paths])


def _each(found: Inputs, per_report: Callable[[Report], pl.DataFrame], progress: Progress,
          keys: dict[Path, str | None]) -> Iterable[tuple[Path, pl.LazyFrame | Failure, list[str]]]:
    """Every report's outcome in the collection's order: its tagged frame (a plan) or its failure, and its
    notes.

    Outcomes come from the analysis cache where it holds them (``keys``: each report's entry, None for none);
    the others are computed where :mod:`nsysan.parallel` says (reports the caller holds open, in this
    process) and then cached."""
    collection = found.collection
    outcomes: dict[Path, tuple[pl.DataFrame | Failure, list[str]]] = {}
    missing: dict[Path, str] = {}
    todo = []
    for path in collection.paths:
        meta = collection.metadata[path]
        if isinstance(meta, Failure):
            outcomes[path] = meta, []
            continue
        key = keys[path]
        hit = cache.lookup(key) if key else None
        if hit is not None:
            outcomes[path] = hit
            continue
        if key:
            missing[path] = key
        todo.append(path)
    for path in outcomes:
        _tick(progress, path)
    here = [p for p in todo if p in found.opened]
    elsewhere = [p for p in todo if p not in found.opened]
    for path in here:
        outcomes[path] = _work(path, per_report, found.opened[path])
        _tick(progress, path)
    # Dask workers resolve relative paths against their own working folder: they get absolute ones.
    sent = [p.absolute() for p in elsewhere] if parallel.configured_scheduler() else elsewhere
    for i, outcome in parallel.run_each(functools.partial(_work, per_report=per_report), sent):
        outcomes[elsewhere[i]] = outcome
        _tick(progress, elsewhere[i])
    for path, key in missing.items():
        frame, raised = outcomes[path]
        # A report the caller holds open carries the notes of every analysis run on it so far: stored, they
        # would come back with analyses that never read what they are about.
        if isinstance(frame, pl.DataFrame) and path not in found.opened:
            cache.store(key, frame, raised)
    if missing:
        cache.prune()
    for path in collection.paths:
        outcome, raised = outcomes[path]
        if isinstance(outcome, pl.DataFrame):
            outcome = _tagged(outcome, {"report": collection.names[path], **collection.metadata[path]})
        yield path, outcome, raised


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _tick(progress: Progress, path: Path) -> None:
    if progress:
        progress(path)


def _work(path: Path, per_report: Callable[[Report], pl.DataFrame], report: Report | None = None
          ) -> tuple[pl.DataFrame | Failure, list[str]]:
    """One report's untagged frame (or failure) and notes; runs in a worker process as well as here."""
    raised: list[str] = []
    return _analyse(path, report, per_report, raised), raised


def _analyse(path: Path, report: Report | None, per_report: Callable[[Report], pl.DataFrame],
             raised: list[str]) -> pl.DataFrame | Failure:
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NsysanWarning)
        try:
            # A report the caller holds open stays open; one opened here is closed here.
            with contextlib.nullcontext(report) if report is not None else Report(path) as here:
                try:
                    frame = _ranked(per_report(here), here)
                finally:
                    problems = here.problems
        except NsysanError as e:
            return Failure(path, str(e))
        except _damage_errors() as e:
            if type(e).__name__ == "OutOfMemoryException":  # duckdb's: the machine, not the export
                return Failure(path, f"{path}: out of memory while reading the export ({brief(e)}); "
                                     "try fewer --jobs or a machine with more memory")
            why = reason(e, path) if isinstance(e, OSError) else brief(e)
            return Failure(path, f"{path}: cannot read the export ({why}); it may be damaged: export it again")
        finally:
            texts = [str(w.message) for w in caught if issubclass(w.category, NsysanWarning)] + problems
            for text in dict.fromkeys(texts):
                line = text if str(path) in text else f"{path}: {text}"
                if line not in raised:
                    raised.append(line)
    return frame


def _ranked(frame: pl.DataFrame, report: Report) -> pl.DataFrame:
    """Rows of a process get its ``rank`` and ``device_id`` (:mod:`nsysan.ranks`): the keys that keep the
    processes of a distributed job apart."""
    if "pid" not in frame.columns:
        return frame
    return ranks.attach(frame, ranks.processes(report))


def _damage_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged export raises (DuckDB, SQLite, Arrow and the operating system), as opposed to
    bugs (which must stay visible)."""
    import sqlite3

    import duckdb
    import pyarrow

    return duckdb.Error, sqlite3.Error, pyarrow.ArrowException, OSError, pl.exceptions.ComputeError


def _tagged(frame: pl.DataFrame, tags: dict[str, Any]) -> pl.LazyFrame:
    """``frame`` with one constant column per tag, ``report`` first and metadata last; a column the frame
    already has is the frame's own."""
    tagged = frame.lazy().with_columns([pl.lit(value, dtype=_literal_type(value)).alias(key)
                                        for key, value in tags.items() if key not in frame.columns])
    return tagged.select("report", pl.exclude("report")) if "report" in {*frame.columns, *tags} else tagged


def _literal_type(value: Any) -> pl.DataType:
    if isinstance(value, bool):
        return pl.Boolean()
    if isinstance(value, int):
        return pl.Int64()
    if isinstance(value, float):
        return pl.Float64()
    return pl.String()
