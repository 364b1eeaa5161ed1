"""Converting the reports of one batch of :func:`nsysan.exporter.export`: each report by itself
(:class:`_Batch`), on a pool of local threads (:func:`run_locally`) or as one task per report on a Dask
distributed cluster (:func:`run_on_dask`).

Standard library only (Dask is imported when a scheduler is used), so that ``nsysan export`` runs where only
the runner's packages are installed.
"""
from __future__ import annotations

import functools
import os
import queue
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsysan.export_check import SQLITE_SIDE_FILES, ReportError, export_mtime_ns, export_problem, inspect_report
from nsysan.files import reason
from nsysan.host import Completed, ignoring_interrupts, pid_alive, run
from nsysan.nsys_tool import Nsys, NsysVersion

#: nsys's name for each kind of export nsysan makes.
NSYS_TYPE = {"sqlite": "sqlite", "parquet": "parquetdir"}

#: How long an interrupted batch waits for its workers to stop their nsys runs before it gives up on them.
STOP_WAIT_S = 20.0

CONVERTED, UP_TO_DATE, FAILED, PLANNED = "converted", "up-to-date", "failed", "would-convert"
STATUSES = (CONVERTED, UP_TO_DATE, PLANNED, FAILED)


class _Cancelled(BaseException):
    """The batch was interrupted while this report was being converted."""


# -- results and temporaries -------------------------------------------------------------------------------------

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


# -- running a batch ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    """What every report of a batch is converted with; plain data, so that it can be sent to Dask workers."""

    tool: Nsys | None
    kinds: tuple[str, ...]
    force: bool = False
    dry_run: bool = False
    timeout: float | None = None

    def batch(self) -> _Batch:
        return _Batch(self.tool, self.kinds, force=self.force, dry_run=self.dry_run, timeout=self.timeout)


#: One report to convert and where each kind of its exports goes.
Job = tuple[Path, dict[str, Path]]


def convert_all(options: Options, jobs: list[Job], *, workers: int, scheduler: str | None,
                stale: set[Path]) -> Iterator[ExportItem]:
    """Each report's :class:`ExportItem`, in the order they finish: on ``workers`` local threads, or on the Dask
    cluster at ``scheduler``. The stale temporaries removed on the way are added to ``stale``. Closing the
    iterator early (Ctrl-C) stops the nsys runs and removes the temporaries (locally) or cancels the reports
    not started yet (on Dask)."""
    if scheduler:
        return _on_dask(options, jobs, scheduler, stale)
    return run_locally(options.batch(), jobs, workers, stale)


def run_locally(batch: _Batch, jobs: list[Job], workers: int, stale: set[Path]) -> Iterator[ExportItem]:
    pool = _Workers(min(workers, max(1, len(jobs))), "nsysan-export")
    futures: set[Future[ExportItem]] = set()
    try:
        futures = {pool.submit(batch.process, report, outputs) for report, outputs in jobs}
        pending = set(futures)
        while pending:
            # A timeout keeps the main thread responsive to Ctrl-C whatever the platform.
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    except BaseException:  # GeneratorExit too: the caller was interrupted between two reports
        _stop(batch, pool, futures)
        raise
    finally:
        stale.update(batch.stale)
    pool.shutdown(wait=True)


def convert_on_worker(options: Options, job: Job) -> tuple[ExportItem, list[Path]]:
    """One report, as a task on a Dask worker. Its batch state (cancel flag, lock, temporaries) is made here,
    where nsys runs, because locks cannot be sent; the stale temporaries it removed travel back with the item."""
    batch = options.batch()
    item = batch.process(*job)
    return item, sorted(batch.stale)


def _on_dask(options: Options, jobs: list[Job], scheduler: str, stale: set[Path]) -> Iterator[ExportItem]:
    from nsysan import parallel

    # Workers resolve relative paths against their own working folder: they get absolute ones, and the items
    # come back under the paths the caller gave.
    given = {report.absolute(): (report, outputs) for report, outputs in jobs}
    sent = [(absolute, {kind: out.absolute() for kind, out in outputs.items()})
            for absolute, (_, outputs) in given.items()]
    for _, (item, removed) in parallel.map_on_dask(functools.partial(convert_on_worker, options), sent, scheduler):
        stale.update(removed)
        item.report, item.outputs = given[item.report]
        yield item


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
    """Shared state of one batch in this process (on Dask, of one report on its worker): options, the cancel
    flag and the temporaries in use."""

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
                if self.needs_export(item, kind, output, report_time):
                    self.export_kind(item, kind, output, version)
        except ReportError as e:
            item.reason = str(e)
        except OSError as e:
            item.reason = f"{reason(e, e.filename)}{f' ({e.filename})' if e.filename else ''}"
        item.seconds = time.monotonic() - started
        return item.finish()

    def needs_export(self, item: ExportItem, kind: str, output: Path, report_time: int) -> bool:
        """Whether ``output`` must be (re)written; records on ``item`` why, or that it is up to date."""
        if self.force:
            if output.exists():
                item.replaced[kind] = "--force"
            return True
        problem = export_problem(output, kind)
        if problem is None and export_mtime_ns(output, kind) >= report_time:
            item.up_to_date.append(kind)
            return False
        if problem != "missing":
            item.replaced[kind] = problem or "older than the report"
        return True

    def export_kind(self, item: ExportItem, kind: str, output: Path, version: NsysVersion | None) -> None:
        if self.dry_run:
            item.planned.append(kind)
            return
        try:
            self.convert(item.report, kind, output, version)
        except ReportError as e:
            # Once one kind is written, the reason must say which kind failed.
            done_before = item.converted or item.up_to_date
            raise ReportError(f"{kind} export: {e}" if done_before else str(e)) from None
        item.converted.append(kind)

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
