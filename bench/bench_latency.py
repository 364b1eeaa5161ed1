#!/usr/bin/env python3
"""Time ``nsysan latency`` against ``nsys stats -r nvtx_gpu_proj_sum`` on one (large) export.

Both tools run as fresh processes on the same file. The OS file cache is not dropped; instead each tool
runs once first (warming the cache, and giving the outputs compared below), then ``--runs`` timed runs
each, interleaved (nsysan, nsys, nsysan, nsys, ...), and the median is reported. For every run we record

* wall time of the whole command (start of the process to exit of its last waited-for child);
* peak RSS of the process tree: the largest sum of resident memory of the process and all its
  descendants, sampled from /proc every ``--sample-ms`` ms, and ``ru_maxrss`` from ``wait4`` (the largest
  single process of the tree, exact but blind to memory held by several processes at once).

The warm-up outputs are compared per range name and style: nsys's Range Instances / Total Proj Time /
Total GPU Ops against nsysan's gpu_instances / gpu_proj_total_ns / gpu_ops_total.

    python bench/bench_latency.py                  # builds bench/out/<fixture>_x460.sqlite if missing
    python bench/bench_latency.py FILE --runs 5

A JSON result goes to bench/out/latency_<UTC time>.json and bench/out/latency_latest.json (or only to --json FILE).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import make_large_report  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


# -- process-tree measurement --------------------------------------------------------------------------
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


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants right now."""
    children = _children_map()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_measured(cmd: list[str], sample_s: float, log: Path) -> dict:
    """Run ``cmd``; return wall seconds, sampled peak tree RSS and wait4's ru_maxrss (bytes)."""
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                done.wait(sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}; see {log}")
    return {"wall_s": wall, "peak_tree_rss_mb": peak / 2**20, "ru_maxrss_mb": usage.ru_maxrss / 1024,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "cpu_s": usage.ru_utime + usage.ru_stime}


# -- agreement check -----------------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def compare(nsysan_csv: Path, nsys_csv: Path) -> dict:
    """Per (range, style): nsys Range Instances / Total Proj Time / Total GPU Ops vs nsysan's totals."""
    ours = {}
    for row in _read_csv(nsysan_csv):
        if int(row["gpu_instances"] or 0) > 0:
            ours[(row["range"], row["style"])] = (int(row["gpu_instances"]), int(row["gpu_proj_total_ns"]),
                                                  int(row["gpu_ops_total"]))
    theirs = {}
    for row in _read_csv(nsys_csv):
        proj = next(v for k, v in row.items() if k.startswith("Total Proj Time"))
        theirs[(row["Range"], row["Style"])] = (int(row["Range Instances"]), int(proj), int(row["Total GPU Ops"]))
    mismatches = []
    for key in sorted(set(ours) | set(theirs), key=lambda k: (k[0] or "", k[1] or "")):
        a, b = ours.get(key), theirs.get(key)
        if a != b:
            mismatches.append({"range": key[0], "style": key[1],
                               "nsysan (instances, proj_ns, ops)": a, "nsys (instances, proj_ns, ops)": b})
    return {"range_names_compared": len(set(ours) | set(theirs)), "agree": not mismatches,
            "mismatches": mismatches}


# -- context -------------------------------------------------------------------------------------------
def _busy_processes(exclude: int) -> list[str]:
    """Other processes using CPU right now (a 2-core machine is easily disturbed): sampled over 1 s."""
    def ticks() -> dict[int, tuple[int, str]]:
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = open(f"/proc/{entry.name}/stat", "rb").read()
                except OSError:
                    continue
                name = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
                fields = stat[stat.rindex(b")") + 2:].split()
                out[int(entry.name)] = (int(fields[11]) + int(fields[12]), name)
        return out

    before = ticks()
    time.sleep(1.0)
    after = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (t, name) in after.items():
        if pid != exclude and pid in before:
            share = (t - before[pid][0]) / hz
            if share > 0.2:
                busy.append(f"pid {pid} ({name}): {share * 100:.0f}% of a core")
    return busy


def _nsys_version(nsys: str) -> str:
    try:
        return subprocess.run([nsys, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _row_counts(path: Path) -> dict[str, int]:
    tables = ("NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
              "CUPTI_ACTIVITY_KIND_RUNTIME")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables if t in present}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, help="export to analyse (default: build/reuse the large one)")
    parser.add_argument("--kernels", type=int, default=1_080_000, help="size of the default large report")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool (median reported)")
    parser.add_argument("--nsys", default=os.environ.get("NSYS", str(make_large_report.DEFAULT_NSYS)))
    parser.add_argument("--nsysan", default=shutil.which("nsysan", path=str(Path(sys.executable).parent))
                        or shutil.which("nsysan") or "nsysan")
    parser.add_argument("--nsysan-out", type=Path, default=Path("/tmp/x.csv"))
    parser.add_argument("--nsys-out", type=Path, default=Path("/tmp/y"), help="nsys stats -o prefix")
    parser.add_argument("--sample-ms", type=float, default=20.0, help="RSS sampling period")
    parser.add_argument("--json", type=Path, help="result file (default bench/out/latency_<time>.json, also copied "
                        "to bench/out/latency_latest.json)")
    args = parser.parse_args(argv)

    path = args.file
    if path is None:
        source = make_large_report.DEFAULT_SOURCE
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as con:
            n = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
        copies = -(-args.kernels // n)
        path = HERE / "out" / f"{source.name.removesuffix('.sqlite')}_x{copies}.sqlite"
        if not path.exists():
            print(f"building {path} ...", flush=True)
            make_large_report.build(source, path, args.kernels, 1_000_000)
    path = path.resolve()
    nsys_csv = Path(f"{args.nsys_out}_nvtx_gpu_proj_sum.csv")
    tools = {
        "nsysan": [args.nsysan, "latency", str(path), "--format", "csv", "-o", str(args.nsysan_out)],
        "nsys": [args.nsys, "stats", "-r", "nvtx_gpu_proj_sum", "--format", "csv", "--force-overwrite", "true",
                 "-o", str(args.nsys_out), str(path)],
    }
    logs = HERE / "out"
    logs.mkdir(parents=True, exist_ok=True)

    busy = _busy_processes(os.getpid())
    for line in busy:
        print(f"WARNING: another process is busy during the benchmark: {line}", file=sys.stderr)
    load_before = os.getloadavg()

    runs: dict[str, list[dict]] = {name: [] for name in tools}
    warm: dict[str, dict] = {}
    for name, cmd in tools.items():
        print(f"warm-up {name}: {' '.join(cmd)}", flush=True)
        warm[name] = run_measured(cmd, args.sample_ms / 1000, logs / f"{name}.log")
    agreement = compare(args.nsysan_out, nsys_csv)
    for i in range(args.runs):
        for name, cmd in tools.items():
            r = run_measured(cmd, args.sample_ms / 1000, logs / f"{name}.log")
            runs[name].append(r)
            print(f"run {i + 1}/{args.runs} {name:7s} {r['wall_s']:7.2f} s  tree RSS {r['peak_tree_rss_mb']:7.0f} MiB"
                  f"  (maxrss {r['ru_maxrss_mb']:.0f} MiB)", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    summary = {name: {k: round(med(name, k), 3) for k in ("wall_s", "cpu_s", "peak_tree_rss_mb", "ru_maxrss_mb",
                                                         "user_s", "sys_s")} for name in tools}
    # cpu_s (user + sys of the whole tree) is less disturbed by other busy processes than wall time.
    ratio = {k: round(summary["nsysan"][k] / summary["nsys"][k], 3) for k in ("wall_s", "cpu_s", "peak_tree_rss_mb",
                                                                           "ru_maxrss_mb")}
    goal = {"wall_ratio_max": 0.25, "rss_ratio_max": 1.0,
            "met": ratio["wall_s"] <= 0.25 and ratio["peak_tree_rss_mb"] <= 1.0}

    print()
    print(f"file: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    print(f"{'tool':8s} {'wall s (median)':>16s} {'cpu s (user+sys)':>17s} {'peak tree RSS MiB':>18s} "
          f"{'ru_maxrss MiB':>14s}")
    for name in tools:
        s = summary[name]
        print(f"{name:8s} {s['wall_s']:16.2f} {s['cpu_s']:17.2f} {s['peak_tree_rss_mb']:18.0f} {s['ru_maxrss_mb']:14.0f}")
    print(f"{'ratio':8s} {ratio['wall_s']:16.3f} {ratio['cpu_s']:17.3f} {ratio['peak_tree_rss_mb']:18.3f} "
          f"{ratio['ru_maxrss_mb']:14.3f}   (nsysan / nsys)")
    print(f"goal (wall <= 0.25x, RSS <= 1x): {'met' if goal['met'] else 'NOT met'}")
    if agreement["agree"]:
        print(f"totals agree on all {agreement['range_names_compared']} range names")
    else:
        print(f"totals DISAGREE on {len(agreement['mismatches'])} of {agreement['range_names_compared']} range names:")
        for m in agreement["mismatches"][:20]:
            print(f"  {m}")

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "time_utc": stamp, "file": str(path), "file_mb": round(path.stat().st_size / 2**20, 1),
        "rows": _row_counts(path), "runs_per_tool": args.runs, "commands": tools,
        "median": summary, "ratio_nsysan_over_nsys": ratio, "goal": goal, "agreement": agreement,
        "warmup": warm, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": load_before, "busy_processes_before": busy},
        "versions": {"nsysan_git": _git_rev(), "nsys": _nsys_version(args.nsys)},
    }
    try:
        import duckdb
        import polars
        result["versions"].update(duckdb=duckdb.__version__, polars=polars.__version__)
    except ImportError:
        pass
    out = args.json or logs / f"latency_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text)
    if args.json is None:
        (logs / "latency_latest.json").write_text(text)
    print(f"wrote {out}")
    return 0 if agreement["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
