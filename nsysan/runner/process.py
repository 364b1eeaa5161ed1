"""Run one command (numactl + nsys + the workload) with its output in a log file, and a timeout that stops all of it.

The command starts in a new session (its own process group). nsys starts the profiled program in yet another
session, so stopping the group is not enough: every descendant is found through /proc before the signals go out,
and each descendant's own group is signalled too (only groups led by a descendant: nothing else is touched).
Daemons that nsys detaches (its agent) are no longer descendants and are left alone, as nsys expects.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Seconds between SIGTERM (nsys then stops the program and writes what it has) and SIGKILL.
GRACE_S = 10.0
POLL_S = 0.1


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (treated like Ctrl-C)."""


@dataclass(frozen=True)
class Outcome:
    returncode: int | None
    seconds: float
    timed_out: bool = False


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1:
            parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_tree(pids: Sequence[int], sig: int) -> None:
    groups = set()
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                groups.add(pid)
        except OSError:
            pass
    for group in groups:
        try:
            os.killpg(group, sig)
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def stop_tree(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM the command and every descendant; SIGKILL whatever is left after ``grace`` seconds."""
    tree = [proc.pid, *descendants(proc.pid)]
    _signal_tree(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(_alive(p) for p in tree[1:]):
            break
        time.sleep(POLL_S)
    survivors = [p for p in dict.fromkeys([*tree, *descendants(proc.pid)]) if _alive(p)]
    _signal_tree(survivors, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def run_logged(argv: Sequence[str], log: Path, *, timeout: float | None = None,
               env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Outcome:
    """Run ``argv`` with stdout and stderr appended to ``log``; stop it (and its descendants) after ``timeout``
    seconds. On Ctrl-C or :class:`Interrupted` the command is stopped and the exception goes on."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(env) if env is not None else None, cwd=cwd)
        try:
            while True:
                try:
                    code = proc.wait(timeout=POLL_S)
                    return Outcome(code, time.monotonic() - start)
                except subprocess.TimeoutExpired:
                    pass
                if timeout is not None and time.monotonic() - start > timeout:
                    stop_tree(proc)
                    return Outcome(proc.returncode, time.monotonic() - start, timed_out=True)
        except BaseException:
            stop_tree(proc, grace=2.0)
            raise


class terminations_interrupt:
    """Within this block SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread (like Ctrl-C)."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> terminations_interrupt:
        self.previous = {}
        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._raise)
            except ValueError:  # not the main thread
                pass
        return self

    @staticmethod
    def _raise(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
