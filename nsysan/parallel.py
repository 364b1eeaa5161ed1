"""Where per-report work runs: in this process, in local worker processes (``jobs``), or on a Dask distributed
cluster (``scheduler``). Every way gives the same results in the same order; only the wall time differs.

Settings come from :func:`configure` or the environment (``NSYSAN_JOBS``, ``NSYSAN_SCHEDULER``). ``jobs`` is a
number of processes or ``"auto"`` (the cores this process may use); the default is ``auto``. A call with
fewer tasks than two stays in this process, where starting workers would cost more than it saves.

Local workers start from a fork server that has imported nsysan once, so a worker costs a fork, not an
interpreter start; each keeps its DuckDB database (and its loaded SQLite scanner) for all the reports it
reads. Dask workers must import the same nsysan and see the reports at the same paths (a shared file system).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from nsysan.errors import NsysanError

T = TypeVar("T")
R = TypeVar("R")

#: What the fork server imports before it forks workers: the analyses and what they read with (numpy and
#: duckdb by name: nsysan's modules import them on first use, see nsysan.lazy).
PRELOAD = ["nsysan.engine", "nsysan.api", "nsysan.load", "numpy", "duckdb"]

_configured: dict[str, Any] = {}


@dataclass(frozen=True)
class Settings:
    jobs: int
    scheduler: str | None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_jobs(value: str | int | None) -> int:
    """``"auto"``/None -> the cores available; a positive number as it is; anything else a one-line error."""
    if value is None or str(value).strip().lower() in ("", "auto", "0"):
        return available_cores()
    try:
        jobs = int(value)
    except ValueError:
        raise NsysanError(f"jobs must be a positive number or auto, not {value!r}") from None
    if jobs < 1:
        raise NsysanError(f"jobs must be a positive number or auto, not {value!r}")
    return jobs


def settings() -> Settings:
    jobs = _configured.get("jobs", os.environ.get("NSYSAN_JOBS"))
    return Settings(parse_jobs(jobs), configured_scheduler())


def configured_scheduler() -> str | None:
    """The Dask scheduler set by :func:`configure` or ``NSYSAN_SCHEDULER``, None for none."""
    return _configured.get("scheduler", os.environ.get("NSYSAN_SCHEDULER")) or None


def configure(*, jobs: str | int | None = None, scheduler: str | None = None) -> None:
    """Set where work runs for this process: ``jobs`` local processes, or the Dask ``scheduler`` address
    (``tcp://host:8786``; ``"none"`` goes back to local processes)."""
    if jobs is not None:
        _configured["jobs"] = parse_jobs(jobs)
    if scheduler is not None:
        _configured["scheduler"] = None if scheduler.lower() in ("", "none", "local") else scheduler


def run_each(work: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[int, R]]:
    """``(i, work(task_i))`` for every task, in the order they finish. ``work`` and the tasks must pickle
    when they run elsewhere (module-level functions, partials of them, plain data)."""
    tasks = list(tasks)
    now = settings()
    if now.scheduler:
        yield from map_on_dask(work, tasks, now.scheduler)
    elif now.jobs > 1 and len(tasks) > 1:
        yield from _in_processes(work, tasks, min(now.jobs, len(tasks)))
    else:
        for i, task in enumerate(tasks):
            yield i, work(task)


def _in_processes(work: Callable[[T], R], tasks: list[T], jobs: int) -> Iterator[tuple[int, R]]:
    # Imported here: a command whose reports are all cached never starts a worker, and these imports were
    # ~0.04 s of its ~0.9 s.
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    # DuckDB's threads in the workers share the cores: as many workers as cores, one thread each.
    threads = max(1, available_cores() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        pending = {}
        try:
            # A worker can die before the last task is sent, and then submit raises: inside the try too.
            with _main_hidden():  # the workers start at the first submit
                for i, task in enumerate(tasks):
                    pending[pool.submit(work, task)] = i
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    yield i, future.result()
        except BrokenProcessPool:
            raise NsysanError("a worker process died (killed for memory?); try fewer --jobs") from None
        finally:
            for future in pending:
                future.cancel()


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Start workers without the caller's ``__main__``: multiprocessing would run the caller's script again in
    every worker (all of it, where a script has no ``if __name__ == "__main__"`` guard), and the work sent
    to them is nsysan's own functions, which need nothing of it."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _start_worker(threads: int) -> None:
    os.environ["NSYSAN_DUCKDB_THREADS"] = str(threads)


def map_on_dask(work: Callable[[T], R], tasks: Iterable[T], address: str) -> Iterator[tuple[int, R]]:
    """``(i, work(task_i))`` for every task, each one task on the Dask cluster at ``address``, in the order they
    finish. ``work`` must pickle (a module-level function or a partial of one). Leaving early (an error in a
    task, Ctrl-C, a caller that stops iterating) cancels the tasks that have not finished."""
    tasks = list(tasks)
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise NsysanError("--scheduler needs Dask distributed: pip install 'nsysan[dask]'") from None
    from distributed import KilledWorker
    from distributed.comm.addressing import parse_address
    from distributed.comm.core import CommClosedError
    from distributed.comm.registry import get_backend

    try:  # before any Client exists: a half-made one hangs for 20 s on its way out
        get_backend(parse_address(address)[0])
    except ValueError as e:  # e.g. the dashboard's http:// URL
        raise NsysanError(f"not a Dask scheduler address: {address} ({e}); give tcp://HOST:PORT") from None
    try:
        client = Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise NsysanError(f"cannot reach the Dask scheduler at {address} ({e})") from None
    with client, client.as_current():
        futures = client.map(work, tasks, pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except (KilledWorker, CommClosedError) as e:  # the cluster's trouble, not the task's
                    raise NsysanError(f"a Dask worker died or the scheduler went away while running "
                                      f"{tasks[index[future.key]]} ({type(e).__name__}); killed for memory?"
                                      ) from None
                yield index[future.key], result
        finally:
            unfinished = [future for future in futures if not future.done()]
            if unfinished:
                # A cluster that went away cannot be told; its tasks die with it, and the error that got us
                # here is the one to report.
                with suppress(Exception):
                    client.cancel(unfinished)
