#!/usr/bin/env python3
"""``nsysan latency`` on synthetic reports of 1x, 4x and 10x (1 M kernels + 1 M NVTX ranges per 1x): time
and peak memory per scale, and whether they grow linearly.

The goal (from the issue): 10 M kernels and 10 M ranges within 8 GB peak memory on a 24 GB machine, by
streaming or chunking, with cost linear in the report's size. Reports come from make_scale_report.py
(built if missing: ~30 s per 1x; 10x is ~1.7 GiB, so the disk is checked first).

Per scale, each a fresh process (measure.py): nsysan latency ``--runs`` times (median), and at
``--nsys-scales`` (default 1x only: nsys stats needs ~75 s there and grows with the report) nsys stats
nvtx_gpu_proj_sum, whose output is also checked against nsysan's (checks.latency). Linearity is shown as
cost per row (rows = kernels + ranges): wall us/row, and peak-RSS bytes/row both whole and *incremental*
(memory above the 1x run, per extra row), since a fixed ~150 MiB of imports makes whole-RSS per row fall.
A command is stopped past ``--timeout`` seconds or ``--rss-limit-mb`` of tree memory (default 16 GiB, so
a blow-up fails the row instead of running a shared machine out of memory); the row then says so.

    python bench/bench_scale.py                       # 1x, 4x, 10x; nsys stats at 1x
    python bench/bench_scale.py --scales 1,4 --nsys-scales 1,4 --runs 3
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
import make_scale_report  # noqa: E402
import measure  # noqa: E402

GOAL_RSS_MB = 8 * 1024


def counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in (make_scale_report.KERNEL, make_scale_report.NVTX, make_scale_report.RUNTIME)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,4,10", help="comma-separated multiples of --base (default 1,4,10)")
    parser.add_argument("--base", type=int, default=1_000_000, help="kernels and ranges at 1x (default 1,000,000)")
    parser.add_argument("--nsys-scales", default="1", help="scales at which nsys stats runs too (default 1; '' none)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a command is stopped")
    parser.add_argument("--rss-limit-mb", type=float, default=16384, help="tree RSS before a command is stopped")
    measure.add_common_args(parser, runs=1)
    measure.add_nsysan_args(parser)
    args = parser.parse_args(argv)
    nsys = measure.find_nsys(args.nsys)
    scales = [float(s) for s in args.scales.split(",") if s]
    nsys_scales = {float(s) for s in args.nsys_scales.split(",") if s}
    nsysan = measure.nsysan_command(args.nsysan)
    extra = shlex.split(args.nsysan_args)
    env = measure.nsysan_env(args.nsysan_env)
    before_cold = shlex.split(args.before_cold) if args.before_cold else None
    kw = {"sample_s": args.sample_ms / 1000, "timeout_s": args.timeout, "rss_limit_mb": args.rss_limit_mb}
    work = measure.OUT / "scale"
    work.mkdir(parents=True, exist_ok=True)

    files, generated = {}, {}
    for s in scales:
        n = round(s * args.base)
        path = make_scale_report.default_output(n, n)
        if not path.exists():
            print(f"building {path} ...", flush=True)
            generated[s] = make_scale_report.build(path, n, n)
            print(f"  {generated[s]['bytes'] / 2**20:.0f} MiB in {generated[s]['seconds']} s", flush=True)
        files[s] = path
    quiet = measure.warn_if_busy()

    rows = []
    for s in scales:
        path = files[s]
        rc = counts(path)
        n_rows = rc[make_scale_report.KERNEL] + rc[make_scale_report.NVTX]
        out_csv = work / f"latency_x{s:g}.csv"
        cmd = [*nsysan, "latency", str(path), *measure.AS_NSYS, *extra, "--format", "csv", "-o", str(out_csv)]
        by_mode: dict[str, list[dict]] = {}
        for i in range(args.runs):
            if args.wait_quiet:
                measure.wait_quiet(args.wait_quiet)
            for mode, r in measure.nsysan_rounds(cmd, args.mode, before_cold, log=work / f"nsysan_x{s:g}.log",
                                                 env=env, **kw).items():
                by_mode.setdefault(mode, []).append(r)
                print(f"{s:g}x run {i + 1}/{args.runs} nsysan {mode:4s} {measure.fmt(r)}"
                      + (f"  STOPPED ({r['killed']})" if r["killed"] else ""), flush=True)
        row = {"scale": s, "file": str(path), "file_mb": round(path.stat().st_size / 2**20), "rows": rc,
               "kernels_plus_ranges": n_rows, "command": cmd,
               "nsysan": {m: {**measure.median(rs), "killed": next((r["killed"] for r in rs if r["killed"]), None)}
                          for m, rs in by_mode.items()}, "runs": by_mode}
        if s in nsys_scales:
            prefix = work / f"nsys_x{s:g}"
            ncmd = [nsys, "stats", "-r", "nvtx_gpu_proj_sum", "--format", "csv", "--force-overwrite", "true",
                    "-o", str(prefix), str(path)]
            if args.wait_quiet:
                measure.wait_quiet(args.wait_quiet)
            r = measure.run(ncmd, log=work / f"nsys_x{s:g}.log", **kw)
            print(f"{s:g}x nsys stats        {measure.fmt(r)}" + (f"  STOPPED ({r['killed']})" if r["killed"] else ""),
                  flush=True)
            row["nsys"] = r
            ok_runs = [m for m, v in row["nsysan"].items() if not v["killed"]]
            if not r["killed"] and ok_runs:
                row["agreement"] = checks.latency(out_csv, {(): [Path(f"{prefix}_nvtx_gpu_proj_sum.csv")]}, by=[])
        rows.append(row)

    # Per-row cost, against the smallest scale measured (its fixed start-up cost cancels in "incremental").
    print()
    print(f"nsysan latency {shlex.join(extra)}; rows = kernels + NVTX ranges; medians of {args.runs}")
    print(f"{'scale':>5s} {'mode':4s} {'kernels':>10s} {'ranges':>10s} {'MiB file':>8s} | {'wall s':>8s} {'cpu%':>5s} "
          f"{'peak MiB':>8s} {'others':>6s} | {'us/row':>7s} {'cpu us/row':>10s} {'B/row':>6s} {'incr B/row':>10s} | {'nsys s':>7s} {'nsys MiB':>8s} "
          f"{'ratio':>6s} | note")
    base_row = {}
    ok = True
    for row in rows:
        for mode, m in row["nsysan"].items():
            n = row["kernels_plus_ranges"]
            first = base_row.setdefault(mode, (n, m))
            incr = ((m["peak_tree_rss_mb"] - first[1]["peak_tree_rss_mb"]) * 2**20 / (n - first[0])
                    if n > first[0] else None)
            m["us_per_row"] = m["wall_s"] * 1e6 / n
            m["cpu_us_per_row"] = m["cpu_s"] * 1e6 / n
            m["bytes_per_row"] = m["peak_tree_rss_mb"] * 2**20 / n
            m["incremental_bytes_per_row"] = incr
            m["time_growth_vs_smallest"] = m["us_per_row"] / (first[1]["wall_s"] * 1e6 / first[0])
            m["cpu_growth_vs_smallest"] = m["cpu_us_per_row"] / (first[1]["cpu_s"] * 1e6 / first[0])
            ns = row.get("nsys")
            note = []
            if m["killed"]:
                note.append(f"STOPPED: {m['killed']}")
                ok = False
            if row["scale"] == max(scales) and m["peak_tree_rss_mb"] > GOAL_RSS_MB:
                note.append(f"over the {GOAL_RSS_MB} MiB goal")
            if row.get("agreement"):
                note.append("totals agree" if row["agreement"]["agree"] else "totals DISAGREE")
                ok = ok and row["agreement"]["agree"]
            ratio = m["wall_s"] / ns["wall_s"] if ns and not ns["killed"] else None
            incr_s = "" if incr is None else f"{incr:.0f}"
            ns_wall, ns_rss = (f"{ns['wall_s']:.1f}", f"{ns['peak_tree_rss_mb']:.0f}") if ns else ("", "")
            ratio_s = "" if ratio is None else f"{ratio:.2f}"
            print(f"{row['scale']:5g} {mode:4s} {row['rows'][make_scale_report.KERNEL]:10d} "
                  f"{row['rows'][make_scale_report.NVTX]:10d} {row['file_mb']:8d} | {m['wall_s']:8.1f} "
                  f"{m['cpu_util'] * 100:5.0f} {m['peak_tree_rss_mb']:8.0f} {m['others_util']:6.2f} | {m['us_per_row']:7.2f} {m['cpu_us_per_row']:10.2f} "
                  f"{m['bytes_per_row']:6.0f} {incr_s:>10s} | {ns_wall:>7s} {ns_rss:>8s} {ratio_s:>6s} | "
                  f"{'; '.join(note)}")
    growth = {mode: {k: round([r for r in rows if mode in r["nsysan"]][-1]["nsysan"][mode][f"{k}_growth_vs_smallest"], 2)
                     for k in ("time", "cpu")} for mode in base_row}
    print("cost per row at the largest scale / at the smallest (1.0 = perfectly linear): "
          + ", ".join(f"{mode}: wall {g['time']}x, cpu {g['cpu']}x" for mode, g in growth.items())
          + "; wall is the one other load distorts")
    for row in rows:
        if row.get("agreement") and not row["agreement"]["agree"]:
            print(checks.describe(f"{row['scale']:g}x latency", row["agreement"]))

    result = {"base": args.base, "scales": scales, "nsys_scales": sorted(nsys_scales), "mode": args.mode,
              "nsysan_args": extra, "nsysan_env": env, "goal_rss_mb_at_largest": GOAL_RSS_MB, "rows": rows,
              "time_per_row_growth": growth, "generated": generated, **measure.context(nsys), "quiet": quiet}
    print(f"wrote {measure.write_result('scale', result, args.json)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
