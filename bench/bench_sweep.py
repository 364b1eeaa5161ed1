#!/usr/bin/env python3
"""Time nsysan's analyses over a study-sized sweep (100 reports) against a loop of ``nsys stats`` per file.

The issue: a study produces 50-200 reports; nsysan must analyse all of them in <= 0.3x the time of a
shell loop of ``nsys stats`` over the same files (cold), <= 0.1x with its analysis cache (warm).

Per round (``--runs`` rounds, interleaved, medians reported), every command is a fresh process:

* reference loops, one ``nsys stats`` process per file, in turn (as ``for f in ...; do nsys stats ...``):
  ``nvtx_gpu_proj_sum`` (the issue's reference), ``cuda_gpu_kern_sum`` (for ``kernels``) and
  ``cuda_gpu_mem_time_sum,cuda_gpu_mem_size_sum`` (for ``bandwidth``), each ``--format csv``;
* one nsysan command per analysis over the sweep folder, ``--by model --format csv -o`` (``latency``,
  ``kernels`` and ``bandwidth`` with ``--all-instances --no-merge-numbered``, counting what nsys counts); plus
  ``latency_issue``, the issue's exact command (``--exclude-within 'warmup_*' --merge-numbered``).
  ``utilization``, ``throughput`` and ``latency_issue`` have no nsys equivalent and are held against the
  ``nvtx_gpu_proj_sum`` loop, the one the issue names.

``--mode warm`` runs each nsysan command twice and times the second (what an analysis cache speeds up;
without one it measures the same as cold); ``--mode both`` times both. ``--nsysan-args "--jobs 2"``,
``--nsysan-env`` and ``--before-cold`` let the same bench measure later options unchanged.

Before timing, every file is read once (OS file cache warm for both tools, as for a study just written)
and nsysan runs once on one file (byte-compiles the checkout, unpacks DuckDB's extension). After the last
round, nsysan's outputs are checked against the nsys loops' (checks.py): gpu_proj totals per model vs the
sum of nsys's per-file totals, kernel and copy totals likewise; a mismatch makes the exit code 1. The bench
also fails if either tool leaves files in the sweep folder.

    python bench/bench_sweep.py                          # builds bench/out/sweep_100 if missing
    python bench/bench_sweep.py --analyses latency --runs 5 --mode both
    python bench/bench_sweep.py --nsysan "python -m nsysan" --nsysan-args "--jobs 2"
    python bench/bench_sweep.py --tag jobs1 --nsysan-args "--jobs 1"
    python bench/bench_sweep.py --tag jobs2 --nsysan-args "--jobs 2" --same-as jobs1
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checks  # noqa: E402
import make_sweep  # noqa: E402
import measure  # noqa: E402

#: nsys stats report sets run as reference loops, by short name.
REFERENCES = {
    "proj": ["nvtx_gpu_proj_sum"],
    "kern": ["cuda_gpu_kern_sum"],
    "mem": ["cuda_gpu_mem_time_sum", "cuda_gpu_mem_size_sum"],
}
#: analysis -> (nsysan arguments before the paths, reference loop it is held against).
ANALYSES = {
    "latency": (["latency", *measure.AS_NSYS], "proj"),
    "kernels": (["kernels", *measure.AS_NSYS], "kern"),
    "bandwidth": (["bandwidth", *measure.AS_NSYS], "mem"),
    "utilization": (["utilization"], "proj"),
    "throughput": (["throughput"], "proj"),
    "latency_issue": (["latency", "--exclude-within", "warmup_*", "--merge-numbered"], "proj"),
}
GOALS = {"cold": 0.3, "warm": 0.1}
#: Metadata the manifest knows per report, so groups can be rebuilt for the checks.
MANIFEST_KEYS = ("model", "variant", "gpu", "numa")


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def same_rows(ours: Path, theirs: Path) -> dict:
    """Whether two runs wrote the same rows (order aside: parallel runs may emit groups in another order)."""
    if not theirs.exists():
        return {"identical": False, "reason": f"{theirs} missing"}
    a, b = checks.read_csv(ours), checks.read_csv(theirs)
    key = lambda rows: sorted(tuple(sorted(r.items())) for r in rows)  # noqa: E731
    ka, kb = key(a), key(b)
    return {"identical": ka == kb, "rows": len(a), "other_rows": len(b),
            "rows_only_here": len(set(ka) - set(kb)), "rows_only_there": len(set(kb) - set(ka))}


def groups_for(manifest: dict, by: list[str], outputs: Path, report: str) -> checks.Groups | None:
    """{group values as nsysan's CSV writes them: [nsys CSV of each report in the group]}; None when a
    ``by`` key is not one the manifest knows (the check is then skipped)."""
    if any(k not in MANIFEST_KEYS for k in by):
        return None
    groups: checks.Groups = {}
    for i, r in enumerate(manifest["reports"]):
        files = groups.setdefault(tuple("" if r[k] is None else str(r[k]) for k in by), [])
        path = outputs / f"{i:03d}_{report}.csv"
        # nsys writes no file for a report with nothing to show (e.g. no memsets): nothing to add.
        if path.exists():
            files.append(path)
    return groups


def check(analysis: str, csv: Path, manifest: dict, by: list[str], nsys_out: Path, refs_run: set[str]) -> dict | None:
    """The agreement check for one analysis against the reference loops that ran (None: not checkable)."""
    def g(ref: str, report: str) -> checks.Groups | None:
        return groups_for(manifest, by, nsys_out / ref, report) if ref in refs_run else None

    if analysis == "latency" and (groups := g("proj", "nvtx_gpu_proj_sum")):
        return checks.latency(csv, groups, by)
    if analysis == "kernels" and (groups := g("kern", "cuda_gpu_kern_sum")):
        return checks.kernels(csv, groups, by)
    if analysis == "bandwidth" and (times := g("mem", "cuda_gpu_mem_time_sum")):
        return checks.bandwidth(csv, times, g("mem", "cuda_gpu_mem_size_sum"), by)
    if analysis == "utilization" and (groups := g("kern", "cuda_gpu_kern_sum")):
        return checks.utilization(csv, groups, by)
    if analysis in ("throughput", "utilization") and (groups := g("proj", "nvtx_gpu_proj_sum")):
        return checks.rows_per_group(csv, groups, by)
    return None  # latency_issue: merged/filtered ranges have no nsys counterpart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", nargs="?", type=Path, help="sweep folder made by make_sweep.py "
                        "(default bench/out/sweep_<n>, built if missing)")
    parser.add_argument("-n", type=int, default=100, help="reports in the default sweep (default 100)")
    parser.add_argument("--analyses", default=",".join(ANALYSES),
                        help=f"comma-separated, from {', '.join(ANALYSES)} (default all)")
    parser.add_argument("--by", default="model", help="nsysan --by (default model)")
    parser.add_argument("--tag", default="", help="keep this run's outputs in bench/out/sweep/<tag>/ and its JSON "
                        "as sweep_<tag>_*.json (e.g. jobs1, jobs2)")
    parser.add_argument("--same-as", metavar="TAG", help="also require nsysan's outputs to equal those of the run "
                        "tagged TAG (rows compared as sets), e.g. --jobs 2 against --jobs 1")
    measure.add_common_args(parser)
    measure.add_nsysan_args(parser)
    args = parser.parse_args(argv)

    nsys = measure.find_nsys(args.nsys)
    sweep = (args.sweep or make_sweep.default_dir(args.n)).resolve()
    if args.sweep is None:
        make_sweep.build(args.n, sweep)
    manifest_path = sweep / "sweep.json"
    if not manifest_path.exists():
        raise SystemExit(f"{sweep}: no sweep.json; make it with bench/make_sweep.py")
    manifest = json.loads(manifest_path.read_text())
    files = [sweep / r["path"] for r in manifest["reports"]]
    analyses = [a for a in args.analyses.split(",") if a]
    if unknown := [a for a in analyses if a not in ANALYSES]:
        raise SystemExit(f"unknown analyses: {', '.join(unknown)}")
    refs_run = sorted({ANALYSES[a][1] for a in analyses}, key=list(REFERENCES).index)
    by = [k for k in args.by.split(",") if k]
    work = measure.OUT / "sweep" / args.tag if args.tag else measure.OUT / "sweep"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    nsysan = measure.nsysan_command(args.nsysan)
    extra = shlex.split(args.nsysan_args)
    env = measure.nsysan_env(args.nsysan_env)
    before_cold = shlex.split(args.before_cold) if args.before_cold else None
    kw = {"sample_s": args.sample_ms / 1000}

    ref_cmds = {}
    for ref in refs_run:
        # Emptied first: a stale CSV from another sweep would be summed into this one's check.
        shutil.rmtree(work / "nsys" / ref, ignore_errors=True)
        (work / "nsys" / ref).mkdir(parents=True)
        ref_cmds[ref] = [[nsys, "stats", "-r", ",".join(REFERENCES[ref]), "--format", "csv", "--force-overwrite",
                          "true", "-o", str(work / "nsys" / ref / f"{i:03d}"), str(f)] for i, f in enumerate(files)]
    cmds = {a: [*nsysan, *ANALYSES[a][0], str(sweep), *(["--by", args.by] if by else []), *extra,
                "--format", "csv", "-o", str(work / f"{a}.csv")] for a in analyses}

    quiet = measure.warn_if_busy()
    # Page cache: every report read once, as right after a study wrote them. Then one untimed nsysan run on
    # one file, so byte-compiling the checkout or unpacking DuckDB's extension is not billed to round 1.
    for f in files:
        f.read_bytes()
    measure.run([*nsysan, "latency", str(files[0]), *extra, "--format", "csv", "-o", str(work / "prime.csv")],
                log=logs / "prime.log", env=env, **kw)
    seen = snapshot(sweep)
    left_behind: dict[str, list[str]] = {}

    def note_leftovers(tool: str) -> None:
        """Files that appeared in the sweep folder since the last look are charged to ``tool``."""
        new = snapshot(sweep) - seen
        if new:
            left_behind.setdefault(tool, []).extend(sorted(new))
            seen.update(new)

    runs: dict[str, list[dict]] = {}
    not_quiet = []

    def wait() -> None:
        if args.wait_quiet and not measure.wait_quiet(args.wait_quiet):
            not_quiet.append(len(sum(runs.values(), [])))

    for i in range(args.runs):
        for ref in refs_run:
            wait()
            r = measure.run_loop(ref_cmds[ref], log=logs / f"nsys_{ref}.log", **kw)
            note_leftovers(f"nsys {ref}")
            runs.setdefault(f"nsys:{ref}", []).append(r)
            print(f"round {i + 1}/{args.runs} nsys loop {ref:5s}        {measure.fmt(r)}", flush=True)
        for a in analyses:
            wait()
            for mode, r in measure.nsysan_rounds(cmds[a], args.mode, before_cold, log=logs / f"nsysan_{a}.log",
                                                 env=env, **kw).items():
                runs.setdefault(f"nsysan:{a}:{mode}", []).append(r)
                print(f"round {i + 1}/{args.runs} nsysan {a:13s} {mode:4s} {measure.fmt(r)}", flush=True)
            note_leftovers(f"nsysan {a}")

    summary = {name: measure.median(rs, (*measure.KEYS, "user_s", "sys_s", "sampler_cpu_s"))
               for name, rs in runs.items()}
    rows, agreement = [], {}
    for a in analyses:
        agreement[a] = check(a, work / f"{a}.csv", manifest, by, work / "nsys", set(refs_run))
        ref = ANALYSES[a][1]
        for mode in [m for m in ("cold", "warm") if f"nsysan:{a}:{m}" in summary]:
            ours, theirs = summary[f"nsysan:{a}:{mode}"], summary[f"nsys:{ref}"]
            rt = measure.ratio(ours, theirs, ("wall_s", "cpu_s", "peak_tree_rss_mb"))
            rows.append({"analysis": a, "mode": mode, "reference": ",".join(REFERENCES[ref]), "nsysan": ours,
                         "nsys_loop": theirs, "ratio": rt, "goal_wall_ratio_max": GOALS[mode],
                         "met": rt["wall_s"] <= GOALS[mode]})

    print()
    print(f"sweep: {sweep} ({len(files)} reports), --by {args.by or '(none)'} {shlex.join(extra)}; "
          f"medians of {args.runs}; cpu % = (user+sys)/wall, 200 % = both cores")
    print("others = cores used by other processes during the runs (median); above ~0.1 the machine was not quiet "
          "and wall ratios are unreliable; the CPU-seconds ratio (user+sys) is less disturbed by other load")
    print(f"{'analysis':13s} {'mode':4s} {'nsysan s':>9s} {'cpu%':>5s} {'MiB':>5s} {'others':>6s} | {'nsys loop':>22s} "
          f"{'s':>6s} {'cpu%':>5s} {'MiB':>4s} {'others':>6s} | {'ratio':>6s} {'goal':>5s} {'':7s} {'cpu-s ratio':>11s}")
    for row in rows:
        o, t = row["nsysan"], row["nsys_loop"]
        print(f"{row['analysis']:13s} {row['mode']:4s} {o['wall_s']:9.2f} {o['cpu_util'] * 100:5.0f} "
              f"{o['peak_tree_rss_mb']:5.0f} {o['others_util']:6.2f} | {row['reference'][:22]:>22s} {t['wall_s']:6.2f} "
              f"{t['cpu_util'] * 100:5.0f} {t['peak_tree_rss_mb']:4.0f} {t['others_util']:6.2f} | "
              f"{row['ratio']['wall_s']:6.2f} {'<=' + str(row['goal_wall_ratio_max']):>5s} "
              f"{'met' if row['met'] else 'NOT met':7s} {row['ratio']['cpu_s']:11.2f}")
    ok = True
    for a, c in agreement.items():
        print(checks.describe(a, c))
        ok = ok and (c is None or c["agree"])
    same = {}
    if args.same_as:
        for a in analyses:
            same[a] = same_rows(work / f"{a}.csv", measure.OUT / "sweep" / args.same_as / f"{a}.csv")
            print(f"{a}: {'identical to' if same[a]['identical'] else 'DIFFERS from'} the run tagged "
                  f"{args.same_as}" + ("" if same[a]["identical"] else f" ({same[a]})"))
            ok = ok and same[a]["identical"]
    for tool, new in left_behind.items():
        print(f"FAIL: {tool} left {len(new)} file(s) in the sweep folder, e.g. {new[:3]}")
        ok = False

    result = {"sweep": str(sweep), "reports": len(files), "by": args.by, "nsysan_args": extra,
              "nsysan_env": env, "mode": args.mode, "before_cold": before_cold, "runs_per_command": args.runs,
              "commands": {**{a: c for a, c in cmds.items()}, **{f"nsys:{r}": c[0] for r, c in ref_cmds.items()}},
              "summary": rows, "median": summary, "agreement": agreement, "left_behind": left_behind,
              "wait_quiet_s": args.wait_quiet, "not_quiet_before_command_index": not_quiet,
              "runs": runs, **measure.context(nsys), "quiet": quiet}
    result["same_as"] = {"tag": args.same_as, "analyses": same} if args.same_as else None
    prefix = f"sweep_{args.tag}" if args.tag else "sweep"
    print(f"wrote {measure.write_result(prefix, result, args.json)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
