"""Turn nsys reports (``.nsys-rep``, legacy ``.qdrep``) into the exports nsysan reads, many at a time.

    result = nsysan.export(["runs/"], types="both", jobs=4)
    print(result.counts, [(item.report, item.reason) for item in result.failed])

Each report is converted with ``nsys export --type sqlite`` (``<name>.sqlite``) and/or ``--type parquetdir``
(``<name>_pqtdir/``, nsys's own default name), beside the report or mirrored under ``out_dir``.

* **Incremental**: an export that exists, is complete (:func:`nsysan.export_check.export_problem`) and is not older than its
  report is left alone (status ``up-to-date``) unless ``force``.
* **Atomic**: nsys writes to ``<output>.nsysan-<pid>-<random>.tmp`` in the output's folder; the file is checked
  and then renamed into place. On failure, timeout, Ctrl-C or SIGTERM the temporary is removed and nsys (run in
  its own process group) is killed. A run that is SIGKILLed cannot clean up: the next run removes temporaries
  whose process is gone.
* **Failures** are per report, with a one-line reason; the other reports still convert.
"""
from __future__ import annotations

import os
import queue
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsysan import nsys_tool
from nsysan.errors import NsysanError
from nsysan.export_check import SQLITE_SIDE_FILES, ReportError, export_mtime_ns, export_problem, inspect_report
from nsysan.files import reason, resolved
from nsysan.host import Completed, default_jobs, ignoring_interrupts, pid_alive, run, terminations_interrupt
from nsysan.metadata import report_stem
from nsysan.nsys_tool import Nsys, NsysNotFoundError, NsysVersion

REPORT_SUFFIXES = (".nsys-rep", ".qdrep")
TYPE_CHOICES = ("sqlite", "parquet", "both")
#: nsys's name for each kind of export nsysan makes.
NSYS_TYPE = {"sqlite": "sqlite", "parquet": "parquetdir"}
PARQUET_SUFFIX = "_pqtdir"
#: Export metadata tables: nsys 2023+ writes META_DATA_EXPORT, 2022.x EXPORT_META_DATA.
#: The metadata key nsys writes when the export run finished (the time the export took).

#: How long an interrupted batch waits for its workers to stop their nsys runs before it gives up on them.
STOP_WAIT_S = 20.0

CONVERTED, UP_TO_DATE, FAILED, PLANNED = "converted", "up-to-date", "failed", "would-convert"
STATUSES = (CONVERTED, UP_TO_DATE, PLANNED, FAILED)


class _Cancelled(BaseException):
    """The batch was interrupted while this report was being converted."""


# -- names ------------------------------------------------------------------------------------------------------

def _stem(report: Path) -> str:
    """``run.nsys-rep`` -> ``run``; a report named otherwise loses its last suffix."""
    stem = report_stem(report)
    return stem if stem != report.name else (report.stem or report.name)


def output_path(report: Path, kind: str, *, root: Path | None = None, out_dir: Path | None = None) -> Path:
    """Where the ``kind`` ("sqlite" or "parquet") export of ``report`` goes: beside it, or under ``out_dir``
    at the same place relative to ``root`` (the folder the report was found under) as the report."""
    name = _stem(report) + (".sqlite" if kind == "sqlite" else PARQUET_SUFFIX)
    if out_dir is None:
        return report.parent / name
    relative = report.parent.relative_to(root) if root is not None else Path()
    return out_dir / relative / name


def _temp_pattern(output: Path) -> re.Pattern[str]:
    return re.compile(re.escape(output.name) + r"\.nsysan-(?P<pid>\d+)-[0-9a-f]+(?:\.old)?\.tmp"
                      r"(?:-journal|-wal|-shm)?")


def stale_temporaries(output: Path) -> list[Path]:
    """Temporaries of ``output`` left by an nsysan run that no longer exists (SIGKILLed, power loss)."""
    pattern = _temp_pattern(output)
    try:
        names = os.listdir(output.parent)
    except OSError:
        return []
    stale = []
    for name in sorted(names):
        found = pattern.fullmatch(name)
        if found and int(found["pid"]) != os.getpid() and not pid_alive(int(found["pid"])):
            stale.append(output.parent / name)
    return stale


def _remove(path: Path) -> None:
    """Remove a file or folder (and an SQLite file's journals) if present; never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():  # a file appeared while removing (a killed nsys still writing): once more
                shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        for side in SQLITE_SIDE_FILES:
            Path(f"{path}{side}").unlink(missing_ok=True)
    except OSError:
        pass


# -- results -----------------------------------------------------------------------------------------------------

@dataclass
class ExportItem:
    """What happened to one report. ``status`` is converted, up-to-date, would-convert (dry run) or failed."""

    report: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    status: str = ""
    reason: str | None = None
    converted: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    #: Existing outputs that were (or would be) replaced, and why: {"sqlite": "older than the report"}.
    replaced: dict[str, str] = field(default_factory=dict)
    report_version: str | None = None
    seconds: float = 0.0

    def finish(self) -> ExportItem:
        self.status = (FAILED if self.reason else PLANNED if self.planned else CONVERTED if self.converted
                       else UP_TO_DATE)
        return self

    def line(self) -> str:
        """One line for messages: ``path: reason`` for failures, ``path: status`` otherwise."""
        return f"{self.report}: {self.reason}" if self.reason else f"{self.report}: {self.status}"

    def to_dict(self) -> dict[str, Any]:
        return {"report": str(self.report), "status": self.status, "reason": self.reason,
                "outputs": {k: str(v) for k, v in self.outputs.items()}, "converted": self.converted,
                "up_to_date": self.up_to_date, "planned": self.planned, "replaced": self.replaced,
                "report_nsys_version": self.report_version, "seconds": round(self.seconds, 3)}


@dataclass
class ExportResult:
    """The outcome of :func:`export`: one :class:`ExportItem` per report (sorted by path), and the nsys used."""

    items: list[ExportItem]
    nsys: Nsys | None
    kinds: tuple[str, ...]
    dry_run: bool = False
    seconds: float = 0.0
    #: Batch-level remarks (e.g. "nsys 2022.4 has no parquetdir export: SQLite only").
    notes: list[str] = field(default_factory=list)
    #: Temporaries of earlier, killed runs that were removed (or, in a dry run, would be).
    stale_removed: list[Path] = field(default_factory=list)

    def _with(self, status: str) -> list[ExportItem]:
        return [item for item in self.items if item.status == status]

    @property
    def converted(self) -> list[ExportItem]:
        return self._with(CONVERTED)

    @property
    def up_to_date(self) -> list[ExportItem]:
        return self._with(UP_TO_DATE)

    @property
    def planned(self) -> list[ExportItem]:
        return self._with(PLANNED)

    @property
    def failed(self) -> list[ExportItem]:
        return self._with(FAILED)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def counts(self) -> dict[str, int]:
        return {"total": len(self.items), **{s.replace("-", "_"): len(self._with(s)) for s in STATUSES}}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``nsysan export --summary FILE`` writes)."""
        return {
            "nsys": None if self.nsys is None else {"path": str(self.nsys.path), "version": str(self.nsys.version),
                                                    "source": self.nsys.source},
            "types": list(self.kinds), "dry_run": self.dry_run, "seconds": round(self.seconds, 3),
            "counts": self.counts, "notes": self.notes, "stale_removed": [str(p) for p in self.stale_removed],
            "items": [item.to_dict() for item in self.items],
        }

    def to_frame(self):  # -> polars.DataFrame (imported lazily: the exporter itself needs no polars)
        """One row per report: report, status, outputs, converted, reason, report_nsys_version, seconds."""
        import polars as pl

        rows = [{"report": str(i.report), "status": i.status,
                 "outputs": ", ".join(str(p) for p in i.outputs.values()),
                 "converted": ",".join(i.converted) or None, "reason": i.reason,
                 "report_nsys_version": i.report_version, "seconds": round(i.seconds, 3)} for i in self.items]
        schema = {"report": pl.String, "status": pl.String, "outputs": pl.String, "converted": pl.String,
                  "reason": pl.String, "report_nsys_version": pl.String, "seconds": pl.Float64}
        return pl.DataFrame(rows, schema=schema)


# -- finding reports ---------------------------------------------------------------------------------------------

def find_reports(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, Path | None]], list[ExportItem]]:
    """``(report, root)`` pairs for every report named by ``paths`` (folders searched recursively for
    ``*.nsys-rep`` and ``*.qdrep``; ``root`` is the folder, None for a file named directly), and a failed item for
    every path that does not exist. A file named directly is kept whatever its name, so that it gets a reason."""
    found: dict[Path, tuple[Path, Path | None]] = {}
    missing: list[ExportItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                # Anything named like a report but a folder is kept (a FIFO, a device, a broken link), so that it
                # is refused in one line instead of left out without a word.
                if candidate.suffix in REPORT_SUFFIXES and not candidate.is_dir():
                    found.setdefault(_identity(candidate), (candidate, path))
        elif path.exists() or path.is_symlink():
            found.setdefault(_identity(path), (path, None))
        else:
            missing.append(ExportItem(path, reason="no such file or folder").finish())
    return list(found.values()), missing


def _identity(path: Path) -> Path:
    return resolved(path)  # a link loop or broken link stays as it is (Path.resolve raises on a loop)


# -- the batch ---------------------------------------------------------------------------------------------------

def resolve_kinds(types: str, tool: Nsys | None) -> tuple[tuple[str, ...], list[str]]:
    """The export kinds to write for ``types`` (sqlite | parquet | both) with this nsys, and notes."""
    if types not in TYPE_CHOICES:
        raise NsysanError(f"--type must be one of {', '.join(TYPE_CHOICES)}, not {types!r}")
    kinds = ("sqlite", "parquet") if types == "both" else (types,)
    if "parquet" in kinds and tool is not None and not tool.supports_parquetdir:
        if types == "parquet":
            raise NsysanError(f"nsys {tool.version} ({tool.path}) cannot export parquetdir (nsys 2023.1 and newer "
                              "can): use --type sqlite, or a newer nsys with --nsys PATH")
        return ("sqlite",), [f"nsys {tool.version} has no parquetdir export: wrote SQLite only"]
    return kinds, []


def export(paths: str | Path | Iterable[str | Path], *, types: str = "sqlite", out_dir: str | Path | None = None,
           jobs: int | None = None, force: bool = False, dry_run: bool = False, timeout: float | None = None,
           nsys: str | Path | Nsys | None = None,
           progress: Callable[[ExportItem, int, int], None] | None = None) -> ExportResult:
    """Convert every report under ``paths`` with ``nsys export``; see the module doc for the rules.

    ``types``: "sqlite" (default), "parquet" (parquetdir) or "both" (parquetdir where the nsys supports it).
    ``jobs``: parallel conversions (default: the number of cores). ``timeout``: seconds per nsys run.
    ``nsys``: the nsys binary (or an install folder); default: :func:`nsysan.nsys_tool.find_nsys`.
    ``progress(item, done, total)`` is called in the calling thread after each report.

    Raises :class:`NsysanError` for problems with the request itself (no reports found, no nsys, bad option);
    problems with single reports are in the result's ``failed`` items. KeyboardInterrupt (Ctrl-C, and SIGTERM or
    SIGHUP while running in the main thread) stops nsys, removes temporaries and is re-raised."""
    started = time.monotonic()
    if jobs is not None and jobs < 1:
        raise NsysanError(f"--jobs must be at least 1, not {jobs}")
    if timeout is not None and timeout <= 0:
        raise NsysanError(f"--timeout must be positive, not {timeout:g}")
    if types not in TYPE_CHOICES:
        raise NsysanError(f"--type must be one of {', '.join(TYPE_CHOICES)}, not {types!r}")
    chosen = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not chosen:
        raise NsysanError("no input: give .nsys-rep / .qdrep files or folders to search")
    reports, failures = find_reports(chosen)
    if not reports and all(Path(p).is_dir() for p in chosen):
        raise NsysanError(f"no .nsys-rep or .qdrep reports found under {', '.join(map(str, chosen))}")
    notes: list[str] = []
    tool: Nsys | None
    try:
        tool = nsys if isinstance(nsys, Nsys) else nsys_tool.find_nsys(nsys)
    except NsysNotFoundError as e:
        if not dry_run:
            raise
        tool = None
        notes.append(f"{e} (dry run: nothing was exported)")
    kinds, kind_notes = resolve_kinds(types, tool)
    notes += kind_notes
    destination = Path(out_dir) if out_dir is not None else None

    batch = _Batch(tool, kinds, force=force, dry_run=dry_run, timeout=timeout)
    jobs_list: list[tuple[Path, dict[str, Path]]] = []
    claimed: dict[Path, Path] = {}
    for report, root in reports:
        outputs = {k: output_path(report, k, root=root, out_dir=destination) for k in kinds}
        clash = next((claimed[_identity(o)] for o in outputs.values() if _identity(o) in claimed), None)
        if clash is not None:
            failures.append(ExportItem(report, outputs, reason=f"same output as {clash}: rename one of them or "
                                       "export them into different --out-dir folders").finish())
            continue
        claimed.update({_identity(o): report for o in outputs.values()})
        jobs_list.append((report, outputs))

    items: list[ExportItem] = []
    total = len(failures) + len(jobs_list)
    for item in failures:
        items.append(item)
        if progress:
            progress(item, len(items), total)
    workers = min(jobs or default_jobs(), max(1, len(jobs_list)))
    pool = _Workers(workers, "nsysan-export")
    with terminations_interrupt():
        futures: set[Future[ExportItem]] = set()
        try:
            futures = {pool.submit(batch.process, report, outputs) for report, outputs in jobs_list}
            pending = set(futures)
            while pending:
                # A timeout keeps the main thread responsive to Ctrl-C whatever the platform.
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    item = future.result()
                    items.append(item)
                    if progress:
                        progress(item, len(items), total)
        except BaseException:
            _stop(batch, pool, futures)
            raise
        pool.shutdown(wait=True)
    items.sort(key=lambda i: str(i.report))
    return ExportResult(items, tool, kinds, dry_run, time.monotonic() - started, notes, sorted(batch.stale))


class _Workers:
    """A pool of daemon threads: unlike ThreadPoolExecutor's (which the interpreter joins at exit), a worker stuck
    in the operating system (a hung file system) cannot keep an interrupted nsysan from exiting."""

    def __init__(self, workers: int, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                    future.set_exception(e)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _stop(batch: _Batch, pool: _Workers, futures: set[Future[ExportItem]]) -> None:
    """After Ctrl-C or SIGTERM: cancel what has not started, stop the nsys runs (the workers see the cancel
    flag within 0.1 s and kill their nsys), remove the temporaries. Waiting for the workers is bounded
    (STOP_WAIT_S) and does not ignore signals: a worker stuck in the operating system (a hung file system)
    cannot keep nsysan from exiting; only the removal of temporaries, which takes no time, is shielded from a
    second Ctrl-C."""
    batch.cancel.set()
    for future in futures:
        future.cancel()
    pool.shutdown(wait=False, cancel_futures=True)
    running = [f for f in futures if not f.done()]
    try:
        wait(running, timeout=STOP_WAIT_S)
    except BaseException:  # a second Ctrl-C: stop waiting, still clean up
        pass
    with ignoring_interrupts():
        batch.remove_temporaries()


class _Batch:
    """Shared state of one :func:`export` call: options, the cancel flag and the temporaries in use."""

    def __init__(self, tool: Nsys | None, kinds: tuple[str, ...], *, force: bool, dry_run: bool,
                 timeout: float | None):
        self.tool, self.kinds, self.force, self.dry_run, self.timeout = tool, kinds, force, dry_run, timeout
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.temps: set[Path] = set()
        self.stale: set[Path] = set()

    # -- temporaries
    def new_temporary(self, output: Path, old: bool = False) -> Path:
        temp = output.with_name(f"{output.name}.nsysan-{os.getpid()}-{secrets.token_hex(4)}"
                                f"{'.old' if old else ''}.tmp")
        with self.lock:
            self.temps.add(temp)
        return temp

    def drop(self, temp: Path) -> None:
        _remove(temp)
        with self.lock:
            self.temps.discard(temp)

    def remove_temporaries(self) -> None:
        with self.lock:
            temps = list(self.temps)
        for temp in temps:
            self.drop(temp)

    def clear_stale(self, output: Path) -> None:
        stale = stale_temporaries(output)
        with self.lock:
            self.stale.update(stale)
        if not self.dry_run:
            for path in stale:
                _remove(path)

    # -- one report
    def process(self, report: Path, outputs: dict[str, Path]) -> ExportItem:
        item = ExportItem(report, dict(outputs))
        started = time.monotonic()
        try:
            if self.cancel.is_set():
                raise _Cancelled
            version = inspect_report(report)
            item.report_version = str(version) if version else None
            report_time = report.stat().st_mtime_ns
            for kind, output in outputs.items():
                self.clear_stale(output)
                if not self.force:
                    problem = export_problem(output, kind)
                    if problem is None and export_mtime_ns(output, kind) >= report_time:
                        item.up_to_date.append(kind)
                        continue
                    if problem != "missing":
                        item.replaced[kind] = problem or "older than the report"
                elif output.exists():
                    item.replaced[kind] = "--force"
                if self.dry_run:
                    item.planned.append(kind)
                    continue
                try:
                    self.convert(report, kind, output, version)
                except ReportError as e:
                    done_before = item.converted or item.up_to_date
                    raise ReportError(f"{kind} export: {e}" if done_before else str(e)) from None
                item.converted.append(kind)
        except ReportError as e:
            item.reason = str(e)
        except OSError as e:
            item.reason = f"{reason(e, e.filename)}{f' ({e.filename})' if e.filename else ''}"
        item.seconds = time.monotonic() - started
        return item.finish()

    def convert(self, report: Path, kind: str, output: Path, version: NsysVersion | None) -> None:
        assert self.tool is not None
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ReportError(f"cannot create {output.parent}: {reason(e)}") from None
        temp = self.new_temporary(output)
        try:
            # NCCL's NVTX payloads (ranks, message sizes) are exported only as JSON, and only when asked for.
            payloads = ["--include-json", "true"] if self.tool.exports_json_payloads else []
            args = [self.tool.path, "export", "--type", NSYS_TYPE[kind], *payloads, "--quiet", "true",
                    "--force-overwrite", "true", "--output", temp, report]
            try:
                done = run(args, timeout=self.timeout, cancel=self.cancel)
            except OSError as e:
                raise ReportError(f"cannot run {self.tool.path}: {reason(e)}") from None
            if done.cancelled:
                raise _Cancelled
            if done.returncode != 0 or done.timed_out:
                raise ReportError(self.failure_reason(done, version))
            if not temp.exists():
                raise ReportError(f"nsys export succeeded but wrote nothing ({done.message() or 'no message'})")
            problem = export_problem(temp, kind)
            if problem is not None:
                raise ReportError(f"nsys export wrote an unusable export: {problem}")
            self.publish(temp, output)
        finally:
            self.drop(temp)

    def publish(self, temp: Path, output: Path) -> None:
        """Rename the finished temporary into place (a folder replacing a folder goes through a second name)."""
        if output.is_dir() and not output.is_symlink():
            old = self.new_temporary(output, old=True)
            os.replace(output, old)
            try:
                os.replace(temp, output)
            except BaseException:
                os.replace(old, output)
                raise
            self.drop(old)
        else:
            # A journal of the file being replaced must not outlive it: SQLite would apply it to the new file.
            for side in SQLITE_SIDE_FILES:
                Path(f"{output}{side}").unlink(missing_ok=True)
            os.replace(temp, output)

    def failure_reason(self, done: Completed, version: NsysVersion | None) -> str:
        assert self.tool is not None
        installed = self.tool.version
        message = done.message()
        newer = (version is not None and version.parts > installed.parts) or "version number is invalid" in message.lower()
        if done.timed_out:
            return f"nsys export timed out after {self.timeout:g} s and was stopped (raise --timeout)"
        if done.killed_by:
            return f"nsys export was killed by {done.killed_by} before it finished"
        if newer:
            made_by = f"nsys {version}" if version is not None else "a newer nsys"
            need = f">= {version.release}" if version is not None else "of the release that made it"
            return (f"report made by {made_by}, newer than the nsys {installed} used here ({self.tool.path}): "
                    f"export it with nsys {need} (--nsys PATH or NSYS=PATH)")
        if re.search(r"magic number mismatch|cannot read from stream|unexpected end|truncat", message, re.I):
            return f"truncated or damaged report (nsys: {message}); copy it again or profile again"
        return f"nsys export failed (exit {done.returncode}): {message or 'no message'}"
