"""What nsysan needs from the machine it runs on: commands with timeouts, signals, atomic files, and what
hardware is here (NUMA nodes, GPUs, each GPU's NUMA node). Standard library only, so the runner, the exporter
and ``nsysan doctor`` share it without the analysis packages.

* :func:`run`: a command in its own session with a timeout and a cancel flag; on either (or on Ctrl-C) the
  command *and every descendant* is stopped: nsys starts the profiled program in yet another session, so
  stopping one process group is not enough. Daemons nsys detaches (its agent) are no longer descendants and
  are left alone, as nsys expects;
* :class:`terminations_interrupt`, :func:`ignoring_interrupts`: SIGTERM/SIGHUP handled like Ctrl-C, and
  cleanup that a second Ctrl-C cannot cut short;
* :func:`write_atomic`: a file is written under a temporary name and renamed, never left half-written;
* :func:`discover`: the machine's NUMA nodes (sysfs), GPUs (nvidia-smi, CUDA_VISIBLE_DEVICES, else torch) and
  numactl. Nothing is assumed: what is not found is reported as unknown.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Seconds between SIGTERM (nsys then stops the program and writes what it has) and SIGKILL.
GRACE_S = 10.0
POLL_S = 0.1


# -- processes ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Completed:
    """How a command ended. ``returncode`` is negative (-signal) when a signal ended it; None when it could
    not be reaped."""

    args: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    cancelled: bool = False

    @property
    def killed_by(self) -> str | None:
        """Name of the signal that ended the command (SIGKILL, ...), when one did and nsysan did not send it."""
        if self.returncode is None or self.returncode >= 0 or self.timed_out or self.cancelled:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def message(self) -> str:
        """The command's own explanation as one line: its last error line, else the last line it printed."""
        return last_message(self.stderr + "\n" + self.stdout)


def last_message(output: str) -> str:
    lines = [" ".join(line.split()) for line in re.split(r"[\r\n]+", output)]
    lines = [line for line in lines if line and not re.match(r"^(Processing|Exporting) \d+ events", line)]
    # Words in file paths (".../error_logs/...") are not messages: look at the text outside paths only.
    errors = [line for line in lines
              if re.search(r"\b(errors?|fail(s|ed|ing|ure)?|invalid|cannot|not found|denied)\b",
                           re.sub(r"\S*/\S*", "", line), re.I)]
    chosen = (errors or lines or [""])[-1]
    chosen = re.sub(r"^(Exportation error|Error|ERROR):\s*", "", chosen).rstrip(".")
    return chosen if len(chosen) <= 300 else chosen[:297] + "..."


def run(args: Sequence[str | os.PathLike], *, timeout: float | None = None, cancel: threading.Event | None = None,
        env: Mapping[str, str] | None = None, cwd: Path | None = None, log: Path | None = None,
        grace: float = 2.0) -> Completed:
    """Run a command in its own session and wait for it; stop it and its descendants (SIGTERM, then SIGKILL
    after ``grace`` s) after ``timeout`` seconds, when ``cancel`` is set (checked every 0.1 s), or when this
    thread is interrupted (the exception goes on). Output goes to temporary files (nothing blocks on a pipe),
    or, with ``log``, is appended to that file after a ``$ command`` line.

    Never raises for the command's own failure; raises OSError when it cannot be started."""
    argv = tuple(str(a) for a in args)
    start = time.monotonic()
    with _output_files(log, argv) as (out, err):
        if cancel is not None and cancel.is_set():
            return Completed(argv, -signal.SIGTERM, "", "", 0.0, cancelled=True)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                env=dict(env) if env is not None else None, cwd=cwd)
        timed_out = cancelled = False
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                cancelled = cancel is not None and cancel.is_set()
                timed_out = not cancelled and timeout is not None and time.monotonic() - start > timeout
                if cancelled or timed_out:
                    stop_tree(proc, grace=0.5 if cancelled else grace)
                    break
        except BaseException:
            stop_tree(proc, grace=min(grace, 2.0))
            raise
        stdout, stderr = ("", "") if log is not None else (_read(out), _read(err))
        return Completed(argv, proc.returncode, stdout, stderr, time.monotonic() - start, timed_out, cancelled)


@contextmanager
def _output_files(log: Path | None, argv: tuple[str, ...]) -> Iterator[tuple[Any, Any]]:
    if log is None:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            yield out, err
        return
    import shlex

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        yield out, subprocess.STDOUT


def _read(file: Any) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 in a container may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (also one of another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    """SIGTERM the command, every descendant and the process groups they lead; SIGKILL whatever is left
    after ``grace`` seconds."""
    tree = [proc.pid, *descendants(proc.pid)]
    _signal_tree(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(alive(p) for p in tree[1:]):
            break
        time.sleep(POLL_S / 2)
    survivors = [p for p in dict.fromkeys([*tree, *descendants(proc.pid)]) if alive(p)]
    _signal_tree(survivors, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def default_jobs() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- signals --------------------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; handled like Ctrl-C."""


class terminations_interrupt:
    """Within this block SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, so that they clean
    up like Ctrl-C (elsewhere the block does nothing)."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> terminations_interrupt:
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def ignoring_interrupts() -> Iterator[None]:
    """Let cleanup finish even if Ctrl-C is pressed again (main thread only). Keep the block short: while it
    runs, SIGINT, SIGTERM and SIGHUP are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# -- files ----------------------------------------------------------------------------------------------------
def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place: a reader never sees a
    half-written file and an earlier file survives a failed write. The file gets the umask's mode (a
    temporary file alone would be private). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the machine ------------------------------------------------------------------------------------------------
SYSFS = Path("/sys")


def parse_list(text: str) -> list[int]:
    """The kernel's list format: ``0-3,8`` -> [0, 1, 2, 3, 8]."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if part:
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def sysfs_bus_id(bus_id: str) -> str:
    """nvidia-smi's ``00000000:1B:00.0`` as sysfs names it: ``0000:1b:00.0``."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest}" if rest else bus_id.lower()
    except ValueError:
        return bus_id.lower()


def gpu_numa_node(bus_id: str | None, sysfs: Path = SYSFS) -> int | None:
    """The NUMA node sysfs gives a PCI device; None when unknown (no such file, or -1 as in most VMs)."""
    if not bus_id:
        return None
    try:
        node = int((sysfs / "bus" / "pci" / "devices" / sysfs_bus_id(bus_id) / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


@dataclass
class Gpu:
    index: int                    # as CUDA numbers it in the runs (after CUDA_VISIBLE_DEVICES)
    name: str | None = None
    bus_id: str | None = None
    uuid: str | None = None
    numa_node: int | None = None  # None: sysfs gives none (-1 in most VMs and one-socket machines) or no /sys
    driver: str | None = None
    memory: str | None = None


@dataclass
class Machine:
    """``gpus`` is None when GPUs could not be listed at all (``gpu_source`` says why)."""

    numa_nodes: list[int]
    cpu_nodes: list[int]
    gpus: list[Gpu] | None
    gpu_source: str
    numactl: str | None
    node_cpus: dict[int, str] = field(default_factory=dict)
    #: False when sysfs had no NUMA information and one node was assumed.
    numa_known: bool = True

    def gpu(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus or [] if g.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def numa_nodes(sysfs: Path = SYSFS) -> tuple[list[int], list[int], dict[int, str], bool]:
    """Online NUMA nodes, those with CPUs, each node's CPU list, and whether sysfs said so (a kernel without
    NUMA support: one node 0 with every CPU, assumed)."""
    root = sysfs / "devices" / "system" / "node"
    try:
        online = parse_list((root / "online").read_text())
    except (OSError, ValueError):
        online = sorted(int(p.name[4:]) for p in root.glob("node[0-9]*")) if root.is_dir() else []
    if not online:
        return [0], [0], {0: f"0-{(os.cpu_count() or 1) - 1}"}, False
    cpus = {}
    for node in online:
        try:
            cpus[node] = (root / f"node{node}" / "cpulist").read_text().strip()
        except OSError:
            cpus[node] = ""
    try:
        with_cpu = parse_list((root / "has_cpu").read_text())
    except (OSError, ValueError):
        with_cpu = [n for n in online if cpus.get(n)]
    return online, [n for n in online if n in with_cpu], cpus, True


def which(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    return shutil.which(name, path=(environ if environ is not None else os.environ).get("PATH"))


def list_gpus(python: str | None = None, environ: Mapping[str, str] | None = None, sysfs: Path = SYSFS,
              ask_torch: bool = True) -> tuple[list[Gpu] | None, str]:
    """GPUs as the runs will see them (CUDA_VISIBLE_DEVICES applied), and where the list came from."""
    environ = dict(os.environ if environ is None else environ)
    smi = which("nvidia-smi", environ)
    done = run([smi, "--query-gpu=index,name,pci.bus_id,uuid,driver_version,memory.total", "--format=csv,noheader"],
               timeout=30, env=environ) if smi else None
    if done is None or done.returncode != 0:
        why = "nvidia-smi not found" if smi is None else f"nvidia-smi failed ({done.message() if done else ''})"
        if not ask_torch:
            return None, f"none ({why})"
        # No nvidia-smi: ask torch how many devices CUDA shows (slow, so only here).
        code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
        asked = run([python or sys.executable, "-c", code], timeout=120, env=environ)
        lines = asked.stdout.strip().splitlines()
        if asked.returncode != 0 or not lines or not lines[-1].isdigit():
            return None, f"none ({why}, and torch could not be asked)"
        return [Gpu(i) for i in range(int(lines[-1]))], "torch"
    rows = []
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 4 and cells[0].isdigit():
            rows.append(Gpu(int(cells[0]), cells[1], sysfs_bus_id(cells[2]), cells[3], gpu_numa_node(cells[2], sysfs),
                            *(cells[4:6] + [None, None])[:2]))
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return rows, "nvidia-smi"
    chosen = []
    for position, item in enumerate(v.strip() for v in visible.split(",") if v.strip()):
        match = next((g for g in rows if str(g.index) == item or (g.uuid and g.uuid.startswith(item))), None)
        if match is None:
            break  # CUDA stops at the first invalid entry
        chosen.append(Gpu(position, match.name, match.bus_id, match.uuid, match.numa_node, match.driver, match.memory))
    return chosen, f"nvidia-smi, CUDA_VISIBLE_DEVICES={visible}"


def discover(*, gpus: bool = True, python: str | None = None, environ: Mapping[str, str] | None = None,
             sysfs: Path = SYSFS, ask_torch: bool = True) -> Machine:
    """The machine: NUMA nodes from sysfs, GPUs (when ``gpus``) with their NUMA nodes, numactl."""
    nodes, cpu_nodes, cpus, known = numa_nodes(sysfs)
    if gpus:
        found, source = list_gpus(python, environ, sysfs, ask_torch=ask_torch)
    else:
        found, source = [], "CPU mode (no GPU used)"
    return Machine(nodes, cpu_nodes, found, source, which("numactl", environ), cpus, known)
