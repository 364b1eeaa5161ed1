"""Shared measurement for the benches: run a command as a fresh process and say what it cost.

Every bench script measures through :func:`run` (one command) or :func:`run_loop` (commands one after
another, like a shell loop over files), so all figures mean the same thing:

* ``wall_s``: from spawning the (first) process to reaping the (last) one, ``time.perf_counter``.
* ``user_s``/``sys_s``/``cpu_s``: CPU time of the process and every descendant it waited for, from the
  ``rusage`` that ``wait4`` returns. ``cpu_util`` = cpu_s / wall_s: 1.0 is one core busy, 2.0 both cores of
  the 2-core CI machine ("both cores busy" is visible as a number close to ``os.cpu_count()``).
* ``peak_tree_rss_mb``: the largest sum of resident memory of the process and all its descendants,
  sampled from /proc every ``sample_s`` (descendants looked for every RESCAN samples); this sees memory
  held by several worker processes at once.
  ``ru_maxrss_mb`` (from wait4) is exact but only the largest single process of the tree.
* ``sampler_cpu_s``: CPU spent by our own sampling thread (a /proc scan costs ~2 ms here), reported so
  that its share of a 2-core machine is known rather than guessed.
* ``others_util``: CPU that *other* processes used during the run, in cores (busy time of the whole
  machine from /proc/stat, less the command's and the sampler's), so a run disturbed by other load is
  visible in its own record; on 2 cores anything above ~0.1 distorts wall times.

Nothing here depends on a machine-specific timing tool: only /proc, ``os.wait4`` and the standard library.
Results are plain dicts so they go straight into the JSON files that :func:`write_result` writes to
``bench/out/`` (git-ignored).
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Keys of a measurement that are summarised (median) and compared (ratio) across tools.
KEYS = ("wall_s", "cpu_s", "cpu_util", "peak_tree_rss_mb", "ru_maxrss_mb", "others_util")
#: How the benches call nsysan unless told otherwise: only through its command line, never its modules,
#: because its internals are being restructured. Run from the repository root, ``-m`` puts the checkout
#: first on sys.path, so the checked-out nsysan wins over any installed one.
DEFAULT_NSYSAN = [sys.executable, "-m", "nsysan"]
#: Samples between scans of /proc for new descendants (a child is seen within RESCAN x sample_s).
RESCAN = 5
NSYS_CANDIDATES = (Path.home() / ".cache/nsysan/nsys-trixie/target-linux-x64/nsys",)


#: Selection that counts what nsys stats counts (every instance, names as recorded): nsysan's default leaves
#: warm-up out and pools numbered names, so every command checked against nsys stats selects like it.
AS_NSYS = ["--all-instances", "--no-merge-numbered"]


# -- finding the tools ---------------------------------------------------------------------------------
def nsysan_command(spec: str | None = None) -> list[str]:
    """The nsysan command line: ``spec`` (shell words, e.g. ``"python -m nsysan"``), else $NSYSAN_CMD,
    else :data:`DEFAULT_NSYSAN`."""
    spec = spec or os.environ.get("NSYSAN_CMD")
    if not spec:
        compile_checkout()
    return shlex.split(spec) if spec else list(DEFAULT_NSYSAN)


def compile_checkout() -> None:
    """Write the checkout's bytecode, as ``pip install`` does for a user: with PYTHONDONTWRITEBYTECODE set (as
    on some CI machines) every timed run would otherwise compile all of nsysan's modules again (~0.1 s)."""
    import compileall

    compileall.compile_dir(ROOT / "nsysan", quiet=1)


def find_nsys(explicit: str | None = None) -> str:
    """nsys: ``explicit``, else $NSYS, else the copy ``scripts/install-nsys trixie`` installs, else PATH."""
    for candidate in (explicit, os.environ.get("NSYS"), *map(str, NSYS_CANDIDATES), shutil.which("nsys")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("nsys not found: pass --nsys, set $NSYS, or run scripts/install-nsys trixie")


# -- process-tree memory -------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may itself hold spaces.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants right now (one scan of /proc)."""
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def rss(pids: Iterable[int]) -> int:
    """Resident bytes of these processes (those that have exited count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants right now."""
    return rss(tree_pids(root))


def _machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def _stop(pgid: int) -> None:
    """Kill the process group we started for one command (its session holds nothing else)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- running -------------------------------------------------------------------------------------------
def run(cmd: Sequence[str], *, log: Path | None = None, cwd: Path = ROOT, env: dict[str, str] | None = None,
        sample_s: float = 0.02, check: bool = True, timeout_s: float | None = None,
        rss_limit_mb: float | None = None) -> dict:
    """Run ``cmd`` as a fresh process (output to ``log`` or discarded) and measure it (see module doc).

    ``timeout_s`` / ``rss_limit_mb``: stop the command's process group when it runs longer or its tree
    holds more memory (so a bench that finds a blow-up does not run a shared machine out of memory);
    ``killed`` then says why, and ``check`` does not raise."""
    out = log.open("wb") if log else subprocess.DEVNULL
    try:
        busy0 = _machine_busy_s()
        t0 = time.perf_counter()
        # Own session: the process group can be stopped as a whole (it holds only what we started).
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                env=None if env is None else {**os.environ, **env})
        peak, sampler_cpu, killed = 0, 0.0, None
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, sampler_cpu, killed
            c0 = time.thread_time()
            pids, n = [proc.pid], 0
            while not done.is_set():
                # The full /proc scan that finds descendants is the expensive part (~2 ms with 100
                # processes): done every RESCAN-th sample; the known tree's RSS is read every sample.
                if n % RESCAN == 0:
                    pids = tree_pids(proc.pid)
                n += 1
                now = rss(pids)
                peak = max(peak, now)
                why = ("timeout" if timeout_s and time.perf_counter() - t0 > timeout_s else
                       "rss_limit" if rss_limit_mb and now > rss_limit_mb * 2**20 else None)
                if why and not killed:
                    killed = why
                    _stop(proc.pid)
                done.wait(sample_s)
            sampler_cpu = time.thread_time() - c0

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4 (not Popen.wait) because its rusage is the CPU time of this child and the descendants it
        # reaped: the only portable source of per-command CPU without an external timing tool.
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            # Interrupted (Ctrl-C reaches only our own session): do not leave the command running.
            _stop(proc.pid)
            os.waitpid(proc.pid, 0)
            raise
        wall = time.perf_counter() - t0
        busy = _machine_busy_s() - busy0
        done.set()
        sampler.join()
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    if check and rc != 0 and not killed:
        raise SystemExit(f"{shlex.join(cmd)} failed with exit code {rc}" + (f"; see {log}" if log else ""))
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "cpu_s": cpu,
            "cpu_util": cpu / wall if wall else 0.0, "peak_tree_rss_mb": peak / 2**20,
            "ru_maxrss_mb": usage.ru_maxrss / 1024, "sampler_cpu_s": sampler_cpu,
            "others_util": max(0.0, busy - cpu - sampler_cpu) / wall if wall else 0.0, "rc": rc, "killed": killed}


def run_loop(cmds: Iterable[Sequence[str]], *, log: Path | None = None, **kw) -> dict:
    """Run ``cmds`` one after another, each a fresh process, like ``for f in ...; do tool f; done``
    (``log`` keeps the last command's output).

    Wall time covers the whole loop (spawn gaps included, as in a shell loop); CPU times add up; memory is
    the largest of any one command (they never overlap)."""
    t0 = time.perf_counter()
    parts = [run(cmd, log=log, **kw) for cmd in cmds]
    wall = time.perf_counter() - t0
    total = {k: sum(p[k] for p in parts) for k in ("user_s", "sys_s", "cpu_s", "sampler_cpu_s")}
    total["others_util"] = sum(p["others_util"] * p["wall_s"] for p in parts) / wall if wall else 0.0
    return {"wall_s": wall, **total, "cpu_util": total["cpu_s"] / wall if wall else 0.0,
            "peak_tree_rss_mb": max(p["peak_tree_rss_mb"] for p in parts),
            "ru_maxrss_mb": max(p["ru_maxrss_mb"] for p in parts), "commands": len(parts),
            "rc": max(p["rc"] for p in parts), "killed": next((p["killed"] for p in parts if p["killed"]), None)}


def interleaved(tasks: dict[str, Callable[[], dict]], runs: int,
                report: Callable[[int, str, dict], None] | None = None) -> dict[str, list[dict]]:
    """Call every task once per round, ``runs`` rounds (a, b, a, b, ...), so slow drift in the machine's
    state (other load, thermal, file cache) hits all tools alike rather than whichever ran last."""
    results: dict[str, list[dict]] = {name: [] for name in tasks}
    for i in range(runs):
        for name, task in tasks.items():
            r = task()
            results[name].append(r)
            if report:
                report(i, name, r)
    return results


def median(runs: list[dict], keys: Iterable[str] = KEYS) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys if runs and k in runs[0]}


def ratio(a: dict, b: dict, keys: Iterable[str] = ("wall_s", "cpu_s", "peak_tree_rss_mb")) -> dict:
    return {k: round(a[k] / b[k], 3) if b.get(k) else None for k in keys}


def fmt(r: dict) -> str:
    """One line for a measurement: wall, CPU use, peak memory."""
    return (f"{r['wall_s']:8.2f} s  cpu {r['cpu_s']:7.2f} s ({r['cpu_util'] * 100:4.0f} %)  "
            f"tree RSS {r['peak_tree_rss_mb']:7.0f} MiB  others {r['others_util']:.2f} cores")


def nsysan_rounds(cmd: Sequence[str], mode: str, before_cold: Sequence[str] | None = None,
                  **kw) -> dict[str, dict]:
    """One round of an nsysan command in ``mode``; returns {"cold": ..., "warm": ...} (those measured).

    cold: ``before_cold`` first (untimed; e.g. a command that empties the analysis cache), then a timed run;
    warm: the command once untimed (it may fill a cache), then again timed;
    both: ``before_cold``, timed cold run, timed warm run right after it.
    Without a cache, warm and cold differ only by noise; that is expected until nsysan has one."""
    out = {}
    if mode in ("cold", "both"):
        if before_cold:
            run(before_cold, **{k: v for k, v in kw.items() if k != "log"})
        out["cold"] = run(cmd, **kw)
    if mode == "warm":
        run(cmd, **kw)
    if mode in ("warm", "both"):
        out["warm"] = run(cmd, **kw)
    return out


# -- context -------------------------------------------------------------------------------------------
def busy_processes(exclude: int | None = None, seconds: float = 1.0) -> list[str]:
    """Other processes using > 20 % of a core during ``seconds``: on 2 cores they distort every figure."""
    def ticks() -> dict[int, tuple[int, str]]:
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                name = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
                fields = stat[stat.rindex(b")") + 2:].split()
                out[int(entry.name)] = (int(fields[11]) + int(fields[12]), name)
        return out

    exclude = os.getpid() if exclude is None else exclude
    before = ticks()
    time.sleep(seconds)
    after = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (t, name) in after.items():
        if pid != exclude and pid in before:
            share = (t - before[pid][0]) / hz / seconds
            if share > 0.2:
                busy.append(f"pid {pid} ({name}): {share * 100:.0f}% of a core")
    return busy


def wait_quiet(max_wait_s: float, window_s: float = 2.0) -> bool:
    """Wait (at most ``max_wait_s``) until no other process is busy for ``window_s``: on a shared 2-core
    machine other jobs come and go, and a round measured during one is worth little."""
    deadline = time.monotonic() + max_wait_s
    while True:
        if not busy_processes(seconds=window_s):
            return True
        if time.monotonic() > deadline:
            return False


def warn_if_busy() -> dict:
    """Look for other load before measuring; print it, and return it for the JSON."""
    busy = busy_processes()
    for line in busy:
        print(f"WARNING: another process is busy during the benchmark: {line}", file=sys.stderr)
    return {"load_avg_before": os.getloadavg(), "busy_processes_before": busy}


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def context(nsys: str | None = None) -> dict:
    """Machine and versions, for the JSON (distributions' versions, not imports of nsysan)."""
    versions = {"nsysan_git": _version(["git", "rev-parse", "--short", "HEAD"])}
    if nsys:
        versions["nsys"] = _version([nsys, "--version"])
    for dist in ("duckdb", "polars", "numpy", "pyarrow"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {"machine": {"cpus": os.cpu_count(), "mem_gib": round(mem, 1) if mem else None,
                        "platform": platform.platform(), "python": platform.python_version()},
            "versions": versions}


def write_result(prefix: str, result: dict, path: Path | None = None) -> Path:
    """``path``, else bench/out/<prefix>_<UTC time>.json plus a copy <prefix>_latest.json."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {"time_utc": stamp, **result}
    text = json.dumps(result, indent=2, default=str) + "\n"
    out = path or OUT / f"{prefix}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if path is None:
        (OUT / f"{prefix}_latest.json").write_text(text)
    return out


def add_common_args(parser, runs: int = 3) -> None:
    """Options every bench has: the tools, the number of timed runs, sampling, where the JSON goes."""
    parser.add_argument("--nsys", help="nsys executable (default: $NSYS, ~/.cache/nsysan/nsys-trixie, PATH)")
    parser.add_argument("--nsysan", help="nsysan command line as shell words (default: $NSYSAN_CMD, else "
                        f"'{shlex.join(DEFAULT_NSYSAN)}')")
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs per command, median reported "
                        f"(default {runs})")
    parser.add_argument("--sample-ms", type=float, default=20.0, help="RSS sampling period (default 20)")
    parser.add_argument("--json", type=Path, help="result file (default bench/out/<bench>_<time>.json and "
                        "<bench>_latest.json)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each round wait up to this long for other processes to go idle (default 0)")


def add_nsysan_args(parser) -> None:
    """How nsysan is run: extra arguments and environment (so the same bench measures --jobs, a cache,
    ...), cold or warm."""
    parser.add_argument("--nsysan-args", default="", help="extra arguments for every nsysan command, as shell "
                        "words, e.g. \"--jobs 2\" or \"--no-cache\"")
    parser.add_argument("--nsysan-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for nsysan (repeatable), e.g. a cache location or switch")
    parser.add_argument("--mode", choices=("cold", "warm", "both"), default="cold",
                        help="cold: fresh process (after --before-cold); warm: run twice, time the second; "
                        "both: time both (default cold)")
    parser.add_argument("--before-cold", help="command (shell words) run untimed before every cold nsysan run, "
                        "e.g. one that empties nsysan's cache")


def nsysan_env(pairs: list[str]) -> dict[str, str] | None:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--nsysan-env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env or None
