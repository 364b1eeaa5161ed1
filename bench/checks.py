"""Agreement checks: nsysan's CSV output against nsys stats' per-file CSVs, so a fast-but-wrong nsysan fails.

Each check takes nsysan's output for one command (grouped by ``by`` metadata keys, or ungrouped) and
``groups``: for every group (a tuple of the ``by`` values, as nsysan writes them in CSV) the nsys stats
CSV files of the reports in it. nsys reports one file at a time, so its per-file totals are summed per
group; sums of counts and nanoseconds are exact, so they must match exactly. Only columns of nsysan's
CSV output are read, never its modules.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

Groups = dict[tuple, list[Path]]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _int(value: str | None) -> int:
    return int(float(value)) if value not in (None, "") else 0


def _column(row: dict[str, str], prefix: str) -> str:
    """nsys puts units in headers ("Total Proj Time (ns)"): the value of the first column named ``prefix``."""
    return next(v for k, v in row.items() if k.startswith(prefix))


def _sum_nsys(groups: Groups, key: Callable[[dict], tuple], values: Callable[[dict], tuple]) -> dict:
    totals: dict[tuple, list] = {}
    for group, files in groups.items():
        for path in files:
            for row in read_csv(path):
                k = (group, *key(row))
                v = values(row)
                old = totals.get(k)
                totals[k] = list(v) if old is None else [a + b for a, b in zip(old, v)]
    return {k: tuple(v) for k, v in totals.items()}


def _ours(nsysan_csv: Path, by: list[str], key: Callable[[dict], tuple], values: Callable[[dict], tuple],
          keep: Callable[[dict], bool] = lambda row: True) -> dict:
    """nsysan's rows keyed like :func:`_sum_nsys`; rows sharing a key (e.g. per memory kind) are added."""
    out: dict[tuple, list] = {}
    for row in read_csv(nsysan_csv):
        if keep(row):
            k = (tuple(row[b] for b in by), *key(row))
            v = values(row)
            old = out.get(k)
            out[k] = list(v) if old is None else [a + b for a, b in zip(old, v)]
    return {k: tuple(v) for k, v in out.items()}


def compare(ours: dict, theirs: dict, fields: tuple[str, ...],
            close: Callable[[tuple, tuple], bool] | None = None) -> dict:
    """Keys and values must match (exactly, or per ``close``); at most 20 mismatches are kept."""
    mismatches = []
    keys = set(ours) | set(theirs)
    for key in sorted(keys, key=repr):
        a, b = ours.get(key), theirs.get(key)
        same = a == b or (a is not None and b is not None and close is not None and close(a, b))
        if not same:
            mismatches.append({"key": list(key), "fields": fields, "nsysan": a, "nsys": b})
    return {"compared": len(keys), "agree": not mismatches, "mismatches": mismatches[:20],
            "mismatch_count": len(mismatches)}


def latency(nsysan_csv: Path, groups: Groups, by: list[str]) -> dict:
    """Per (group, range, style) that launched GPU work: nsys's Range Instances / Total Proj Time / Total GPU
    Ops against nsysan's gpu_instances / gpu_proj_total_ns / gpu_ops_total (docs/metrics.md)."""
    fields = ("instances", "proj_ns", "gpu_ops")
    ours = _ours(nsysan_csv, by, lambda r: (r["range"], r["style"]),
                 lambda r: (_int(r["gpu_instances"]), _int(r["gpu_proj_total_ns"]), _int(r["gpu_ops_total"])),
                 keep=lambda r: _int(r["gpu_instances"]) > 0)
    theirs = _sum_nsys(groups, lambda r: (r["Range"], r["Style"]),
                       lambda r: (_int(r["Range Instances"]), _int(_column(r, "Total Proj Time")),
                                  _int(r["Total GPU Ops"])))
    return compare(ours, theirs, fields)


def kernels(nsysan_csv: Path, groups: Groups, by: list[str]) -> dict:
    """Per (group, demangled kernel name): instances and total ns against cuda_gpu_kern_sum."""
    ours = _ours(nsysan_csv, by, lambda r: (r["name"],), lambda r: (_int(r["instances"]), _int(r["total_ns"])))
    theirs = _sum_nsys(groups, lambda r: (r["Name"],),
                       lambda r: (_int(r["Instances"]), _int(_column(r, "Total Time"))))
    return compare(ours, theirs, ("instances", "total_ns"))


def _direction(operation: str) -> str:
    """nsys's "[CUDA memcpy Host-to-Device]" / "[CUDA memset]" as nsysan's direction column names it."""
    op = operation.strip("[]").removeprefix("CUDA ")
    return "Memset" if op == "memset" else op.removeprefix("memcpy ")


def bandwidth(nsysan_csv: Path, time_groups: Groups, size_groups: Groups, by: list[str]) -> dict:
    """Per (group, direction): copies and total ns against cuda_gpu_mem_time_sum (exact), bytes against
    cuda_gpu_mem_size_sum, which prints MB (10^6 B) rounded to 3 decimals: within 500 B per file."""
    ours = _ours(nsysan_csv, by, lambda r: (r["direction"],),
                 lambda r: (_int(r["copies"]), _int(r["time_total_ns"]), _int(r["bytes_total"])))
    times = _sum_nsys(time_groups, lambda r: (_direction(r["Operation"]),),
                      lambda r: (_int(r["Count"]), _int(_column(r, "Total Time"))))
    sizes = _sum_nsys(size_groups, lambda r: (_direction(r["Operation"]),),
                      lambda r: (float(_column(r, "Total (MB)")) * 1e6, 1))
    theirs = {k: (*v, round(sizes[k][0])) if k in sizes else v for k, v in times.items()}
    files = {k: sizes[k][1] for k in sizes}

    def close(a: tuple, b: tuple) -> bool:
        return a[:2] == b[:2] and len(b) == 3 and abs(a[2] - b[2]) <= 500 * max(files.values(), default=1)

    return compare(ours, theirs, ("copies", "time_ns", "bytes"), close)


def utilization(nsysan_csv: Path, kern_groups: Groups, by: list[str]) -> dict:
    """Per group, over the whole capture: nsysan's kernel count and summed kernel time (kernels,
    kernel_sum_ns, added over devices) against the totals of cuda_gpu_kern_sum."""
    ours = _ours(nsysan_csv, by, lambda r: (), lambda r: (_int(r["kernels"]), _int(r["kernel_sum_ns"])))
    theirs = _sum_nsys(kern_groups, lambda r: (),
                       lambda r: (_int(r["Instances"]), _int(_column(r, "Total Time"))))
    return compare(ours, theirs, ("kernels", "kernel_sum_ns"))


def rows_per_group(nsysan_csv: Path, groups: Groups, by: list[str]) -> dict:
    """No nsys report computes this analysis: check only that every group has a row and no other does."""
    seen = defaultdict(int)
    for row in read_csv(nsysan_csv):
        seen[tuple(row[b] for b in by)] += 1
    missing = [list(g) for g in groups if not seen.get(g)]
    extra = [list(g) for g in seen if g not in groups]
    return {"compared": len(groups), "agree": not missing and not extra,
            "mismatches": [{"missing_groups": missing, "unexpected_groups": extra}] if missing or extra else [],
            "mismatch_count": len(missing) + len(extra), "note": "rows per group only (no nsys equivalent)"}


def describe(name: str, check: dict) -> str:
    if check is None:
        return f"{name}: not checked"
    if check["agree"]:
        return f"{name}: agrees with nsys stats on all {check['compared']} keys" + (
            f" ({check['note']})" if check.get("note") else "")
    lines = [f"{name}: DISAGREES on {check['mismatch_count']} of {check['compared']} keys"]
    lines += [f"    {m}" for m in check["mismatches"][:5]]
    return "\n".join(lines)
