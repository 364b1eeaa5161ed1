"""Time ``nsysan latency`` against ``nsys stats -r nvtx_gpu_proj_sum`` on one (large) export.

Both tools run as fresh processes on the same file. The OS file cache is not dropped; instead each tool
runs once first (warming the cache, and giving the outputs compared below), then ``--runs`` timed runs
each, interleaved (nsysan, nsys, nsysan, nsys, ...), and the median is reported. What a run records
(wall time, CPU time and utilisation, peak process-tree RSS, ru_maxrss) is defined in measure.py, which
all benches share.

The warm-up outputs are compared per range name and style: nsys's Range Instances / Total Proj Time /
Total GPU Ops against nsysan's gpu_instances / gpu_proj_total_ns / gpu_ops_total (checks.latency).

    python bench/bench_latency.py                  # builds bench/out/<fixture>_x460.sqlite if missing
    python bench/bench_latency.py FILE --runs 5
    python bench/bench_latency.py --nsysan "python -m nsysan" --nsysan-args "--jobs 2"

A JSON result goes to bench/out/latency_<UTC time>.json and bench/out/latency_latest.json (or only to --json FILE).
"""
from __future__ import annotations

import argparse
import shlex
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checks  # noqa: E402
import make_large_report  # noqa: E402
import measure  # noqa: E402


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
    parser.add_argument("--nsysan-out", type=Path, default=measure.OUT / "latency_nsysan.csv")
    parser.add_argument("--nsys-out", type=Path, default=measure.OUT / "latency_nsys", help="nsys stats -o prefix")
    measure.add_common_args(parser)
    measure.add_nsysan_args(parser)
    args = parser.parse_args(argv)
    nsys = measure.find_nsys(args.nsys)

    path = args.file
    if path is None:
        source = make_large_report.DEFAULT_SOURCE
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as con:
            n = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
        copies = -(-args.kernels // n)
        path = measure.OUT / f"{source.name.removesuffix('.sqlite')}_x{copies}.sqlite"
        if not path.exists():
            print(f"building {path} ...", flush=True)
            make_large_report.build(source, path, args.kernels, 1_000_000)
    path = path.resolve()
    args.nsysan_out.parent.mkdir(parents=True, exist_ok=True)
    nsys_csv = Path(f"{args.nsys_out}_nvtx_gpu_proj_sum.csv")
    nsysan_cmd = [*measure.nsysan_command(args.nsysan), "latency", str(path), *measure.AS_NSYS,
                  *shlex.split(args.nsysan_args), "--format", "csv", "-o", str(args.nsysan_out)]
    nsys_cmd = [nsys, "stats", "-r", "nvtx_gpu_proj_sum", "--format", "csv", "--force-overwrite", "true",
                "-o", str(args.nsys_out), str(path)]
    env = measure.nsysan_env(args.nsysan_env)
    before_cold = shlex.split(args.before_cold) if args.before_cold else None
    kw = {"sample_s": args.sample_ms / 1000}
    logs = measure.OUT
    quiet = measure.warn_if_busy()

    # Warm-up: fills the OS file cache for both tools; these outputs are the ones compared.
    warm = {}
    print(f"warm-up nsysan: {shlex.join(nsysan_cmd)}", flush=True)
    warm["nsysan"] = measure.run(nsysan_cmd, log=logs / "nsysan.log", env=env, **kw)
    print(f"warm-up nsys:   {shlex.join(nsys_cmd)}", flush=True)
    warm["nsys"] = measure.run(nsys_cmd, log=logs / "nsys.log", **kw)
    agreement = checks.latency(args.nsysan_out, {(): [nsys_csv]}, by=[])

    names = [f"nsysan_{m}" for m in (("cold", "warm") if args.mode == "both" else (args.mode,))] + ["nsys"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(args.runs):
        if args.wait_quiet and not measure.wait_quiet(args.wait_quiet):
            print(f"round {i + 1}: machine not quiet after {args.wait_quiet:g} s; measuring anyway", flush=True)
        for mode, r in measure.nsysan_rounds(nsysan_cmd, args.mode, before_cold, log=logs / "nsysan.log",
                                             env=env, **kw).items():
            runs[f"nsysan_{mode}"].append(r)
            print(f"run {i + 1}/{args.runs} nsysan {mode:4s} {measure.fmt(r)}", flush=True)
        r = measure.run(nsys_cmd, log=logs / "nsys.log", **kw)
        runs["nsys"].append(r)
        print(f"run {i + 1}/{args.runs} nsys        {measure.fmt(r)}", flush=True)

    summary = {name: measure.median(rs, (*measure.KEYS, "user_s", "sys_s")) for name, rs in runs.items()}
    # cpu_s (user + sys of the whole tree) is less disturbed by other busy processes than wall time.
    ratios = {name: measure.ratio(summary[name], summary["nsys"], ("wall_s", "cpu_s", "peak_tree_rss_mb",
                                                                  "ru_maxrss_mb"))
              for name in names if name != "nsys"}
    goals = {"nsysan_cold": (0.25, 1.0), "nsysan_warm": (0.05, None)}
    goal = {}
    for name, r in ratios.items():
        wall_max, rss_max = goals[name]
        goal[name] = {"wall_ratio_max": wall_max, "rss_ratio_max": rss_max,
                      "met": r["wall_s"] <= wall_max and (rss_max is None or r["peak_tree_rss_mb"] <= rss_max)}

    print()
    print(f"file: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    print(f"{'tool':12s} {'wall s (median)':>16s} {'cpu s (user+sys)':>17s} {'cpu %':>6s} {'peak tree RSS MiB':>18s} "
          f"{'ru_maxrss MiB':>14s} {'others (cores)':>15s}")
    for name in names:
        s = summary[name]
        print(f"{name:12s} {s['wall_s']:16.2f} {s['cpu_s']:17.2f} {s['cpu_util'] * 100:6.0f} "
              f"{s['peak_tree_rss_mb']:18.0f} {s['ru_maxrss_mb']:14.0f} {s['others_util']:15.2f}")
    for name, r in ratios.items():
        g = goal[name]
        print(f"ratio {name.removeprefix('nsysan_'):6s} {r['wall_s']:16.3f} {r['cpu_s']:17.3f} {'':6s} "
              f"{r['peak_tree_rss_mb']:18.3f} {r['ru_maxrss_mb']:14.3f}   (nsysan / nsys; goal wall <= "
              f"{g['wall_ratio_max']}x" + (f", RSS <= {g['rss_ratio_max']}x" if g["rss_ratio_max"] else "")
              + f": {'met' if g['met'] else 'NOT met'})")
    print(checks.describe("latency", agreement))

    result = {
        "file": str(path), "file_mb": round(path.stat().st_size / 2**20, 1), "rows": _row_counts(path),
        "runs_per_tool": args.runs, "mode": args.mode, "commands": {"nsysan": nsysan_cmd, "nsys": nsys_cmd},
        "nsysan_env": env, "before_cold": before_cold, "median": summary, "ratio_nsysan_over_nsys": ratios,
        "goal": goal, "agreement": agreement, "warmup": warm, "runs": runs, **measure.context(nsys), "quiet": quiet,
    }
    out = measure.write_result("latency", result, args.json)
    print(f"wrote {out}")
    return 0 if agreement["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
