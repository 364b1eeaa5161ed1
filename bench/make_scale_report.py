#!/usr/bin/env python3
"""Write a synthetic nsys SQLite export with K kernels and R NVTX ranges, streaming rows in chunks.

The scale goal: ``nsysan latency`` on 10 M kernels and 10 M NVTX ranges within 8 GB on a 24 GB machine,
with time and memory growing linearly from 1 M/1 M (1x) through 4x to 10x. Replicating a real export
(make_large_report.py) cannot give that many *ranges* per kernel, so this builds a training-like timeline:

* schema: every CREATE TABLE of a real export (default the vit32x6x512 sample), and every table that is
  not an event table copied whole: StringIds, ENUM_*, TARGET_INFO_*, ThreadNames, PROCESSES, META_DATA_*;
* one CPU thread and one stream of that export; per batch the NVTX push/pop ranges
  ``batch_i`` (the first ``--warmup`` named ``warmup_i``) > ``h2d``, ``forward`` > L op ranges,
  ``backward`` > L op ranges (op names cycle attn/mlp/norm/proj, ``*_grad`` in backward): 2L+4 per batch;
* inside the op ranges, one ``cudaLaunchKernel`` per kernel (CUPTI_ACTIVITY_KIND_RUNTIME, same globalTid
  and correlationId as its kernel row); kernels are rows of the source export's 16 kernels (names, grid,
  registers, ...) with their mean durations, run in launch order on the GPU, each no earlier than 2.5 us
  after its launch and never overlapping the previous one; one ``cudaMemcpyAsync`` + H2D copy per batch;
  a ``cudaStreamSynchronize`` ends each batch (so the GPU never runs far behind, as in real training);
* ANALYSIS_DETAILS start/stop span the timeline.

Rows are generated batch by batch and inserted every ``--chunk`` kernel + range rows, so the generator holds one
chunk at a time (its peak RSS is printed). K kernels are spread evenly over the batches; R // (2L+4)
batches give at most R ranges (the exact counts are printed). The file is written under a temporary
name and renamed when complete. Measured here: 1x (1 M / 1 M) 174 MiB in 32 s, 10x 1.76 GiB in 345 s.

    python bench/make_scale_report.py --scale 1 --check-nsys   # -> bench/out/scale/synthetic_k1000000_r1000000.sqlite
    python bench/make_scale_report.py --kernels 200000 --ranges 50000 -o /tmp/s.sqlite
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import measure  # noqa: E402

DEFAULT_SOURCE = ROOT / "nsysan" / "sample" / "pipeline_gpu0_numa0_vit32x6x512.sqlite"
KERNEL, RUNTIME, NVTX, MEMCPY = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS",
                                 "CUPTI_ACTIVITY_KIND_MEMCPY")
#: Event tables: created empty from the source's schema, then filled (or left empty: memsets).
GENERATED = (KERNEL, RUNTIME, NVTX, MEMCPY, "CUPTI_ACTIVITY_KIND_MEMSET")
OPS = ("attn", "mlp", "norm", "proj")
PUSH_POP = 59  # ENUM_NSYS_EVENT_TYPE: NvtxPushPopRange
LAUNCH_NS, LAUNCH_GAP_NS, GPU_LAG_NS = 3_000, 1_000, 2_500   # cudaLaunchKernel call, gap, launch-to-run
#: CPU time between a range's pop and its next sibling's push. Never 0 here: real code runs in between, and
#: nsysan (today) treats siblings that touch (end == next start) as partially overlapping, which it matches
#: with a per-thread cross join (quadratic: 100 k touching ranges ran a 24 GB machine out of memory).
SIBLING_GAP_NS = 200


def default_output(kernels: int, ranges: int) -> Path:
    return HERE / "out" / "scale" / f"synthetic_k{kernels}_r{ranges}.sqlite"


class Source:
    """What the synthetic rows are copied from: templates, ids and names of a real export."""

    def __init__(self, con: sqlite3.Connection):
        cols = lambda t: [r[1] for r in con.execute(f"PRAGMA src.table_info({t})")]  # noqa: E731
        self.cols = {t: cols(t) for t in (KERNEL, RUNTIME, NVTX, MEMCPY)}
        k = self.cols[KERNEL]
        # One template row and the mean duration per kernel name, in order of first appearance.
        self.kernels = []
        for name, dur in con.execute(f"SELECT demangledName, avg(\"end\" - start) FROM src.{KERNEL} "
                                     "GROUP BY demangledName ORDER BY min(start)"):
            row = con.execute(f"SELECT * FROM src.{KERNEL} WHERE demangledName = ? ORDER BY start LIMIT 1",
                              (name,)).fetchone()
            self.kernels.append((list(row), max(1_000, int(dur))))
        self.k_start, self.k_end = k.index("start"), k.index("end")
        self.k_corr, self.k_grid = k.index("correlationId"), k.index("gridId")
        # The thread that pushed NVTX ranges, and the API names it needs.
        self.tid, self.t0 = con.execute(f"SELECT globalTid, min(start) FROM src.{NVTX} WHERE eventType = ?",
                                        (PUSH_POP,)).fetchone()
        names = dict(con.execute("SELECT value, id FROM src.StringIds"))
        self.api = {}
        for short in ("cudaLaunchKernel", "cudaMemcpyAsync", "cudaStreamSynchronize"):
            found = [v for n, v in names.items() if n == short or n.startswith(short + "_v")]
            if not found:
                raise SystemExit(f"source export has no StringIds entry for {short}")
            self.api[short] = found[-1]
        self.memcpy = list(con.execute(f"SELECT * FROM src.{MEMCPY} WHERE copyKind = 1 ORDER BY start LIMIT 1")
                           .fetchone())
        m = self.cols[MEMCPY]
        self.m_start, self.m_end, self.m_corr, self.m_bytes = (m.index(c) for c in ("start", "end", "correlationId",
                                                                                  "bytes"))

    def nvtx_row(self, name: str, start: int) -> list:
        row = dict.fromkeys(self.cols[NVTX])
        row.update(start=start, eventType=PUSH_POP, text=name, globalTid=self.tid, domainId=0)
        return list(row.values())

    def runtime_row(self, start: int, end: int, corr: int, api: str) -> tuple:
        return (start, end, 0, self.tid, corr, self.api[api], 0, None)


def generate(con: sqlite3.Connection, src: Source, kernels: int, ranges: int, ops: int, warmup: int,
             chunk: int, gap: int | None = None) -> dict:
    """Insert the timeline (see module doc); returns row counts and the time span."""
    per_batch = 2 * ops + 4
    gap = SIBLING_GAP_NS if gap is None else gap
    batches = max(1, ranges // per_batch)
    nvtx_end = src.cols[NVTX].index("end")
    kq = f"INSERT INTO {KERNEL} VALUES ({','.join('?' * len(src.cols[KERNEL]))})"
    rq = f"INSERT INTO {RUNTIME} ({','.join(src.cols[RUNTIME][:8])}) VALUES (?,?,?,?,?,?,?,?)"
    nq = f"INSERT INTO {NVTX} VALUES ({','.join('?' * len(src.cols[NVTX]))})"
    mq = f"INSERT INTO {MEMCPY} VALUES ({','.join('?' * len(src.cols[MEMCPY]))})"
    buf = {KERNEL: [], RUNTIME: [], NVTX: [], MEMCPY: []}
    totals = dict.fromkeys(buf, 0)

    def flush() -> None:
        for table, query in ((KERNEL, kq), (RUNTIME, rq), (NVTX, nq), (MEMCPY, mq)):
            con.executemany(query, buf[table])
            totals[table] += len(buf[table])
            buf[table].clear()

    t = gpu_free = src.t0
    corr = grid = 0
    made = 0
    templates = src.kernels
    for b in range(batches):
        # Kernels of this batch: an even share of K, spread over its 2L op ranges.
        kb = kernels * (b + 1) // batches - kernels * b // batches
        nv = []  # this batch's ranges, [row, ...] in start order; ends filled in when known
        batch = src.nvtx_row(f"warmup_{b}" if b < warmup else f"batch_{b - warmup}", t)
        nv.append(batch)
        t += 500
        h2d = src.nvtx_row("h2d", t)
        nv.append(h2d)
        corr += 1
        call = (t + 200, t + 200 + LAUNCH_NS)
        buf[RUNTIME].append(src.runtime_row(*call, corr, "cudaMemcpyAsync"))
        copy = list(src.memcpy)
        start = max(gpu_free, call[0] + GPU_LAG_NS)
        gpu_free = start + copy[src.m_bytes] // 25  # ~25 GB/s pinned H2D
        copy[src.m_start], copy[src.m_end], copy[src.m_corr] = start, gpu_free, corr
        buf[MEMCPY].append(copy)
        t = call[1] + 200
        h2d[nvtx_end] = t
        t += gap
        op_index = 0
        for phase in ("forward", "backward"):
            pass_row = src.nvtx_row(phase, t)
            nv.append(pass_row)
            t += 300
            for j in range(ops):
                name = OPS[j % len(OPS)] + ("_grad" if phase == "backward" else "")
                op = src.nvtx_row(name, t)
                nv.append(op)
                t += 300
                n = kb * (op_index + 1) // (2 * ops) - kb * op_index // (2 * ops)
                op_index += 1
                for i in range(n):
                    corr += 1
                    grid += 1
                    buf[RUNTIME].append(src.runtime_row(t, t + LAUNCH_NS, corr, "cudaLaunchKernel"))
                    row, dur = templates[(made + i) % len(templates)]
                    row = list(row)
                    start = max(gpu_free, t + GPU_LAG_NS)
                    # Small deterministic jitter so durations are not all equal.
                    gpu_free = start + dur + (made + i) * 7919 % 97
                    row[src.k_start], row[src.k_end], row[src.k_corr], row[src.k_grid] = start, gpu_free, corr, grid
                    buf[KERNEL].append(row)
                    t += LAUNCH_NS + LAUNCH_GAP_NS
                made += n
                t += 300
                op[nvtx_end] = t
                t += gap
            t += 300
            pass_row[nvtx_end] = t
            t += gap
        # cudaStreamSynchronize: the CPU waits for the GPU to drain before the next batch.
        corr += 1
        sync_end = max(t + 1_000, gpu_free + 1_000)
        buf[RUNTIME].append(src.runtime_row(t, sync_end, corr, "cudaStreamSynchronize"))
        t = sync_end + 500
        batch[nvtx_end] = t
        t += 2_000
        buf[NVTX].extend(nv)
        if len(buf[KERNEL]) + len(buf[NVTX]) >= chunk:
            flush()
    flush()
    return {"batches": batches, "ranges_per_batch": per_batch, "rows": totals, "t0": src.t0, "t1": t}


def build(output: Path, kernels: int, ranges: int, source: Path = DEFAULT_SOURCE, ops: int = 20,
          warmup: int = 3, chunk: int = 200_000, gap: int | None = None) -> dict:
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -65536"):  # 64 MiB cache
                con.execute(f"PRAGMA {pragma}")
            con.execute("ATTACH ? AS src", (f"file:{source}?mode=ro",))
            tables = [r for r in con.execute("SELECT name, sql FROM src.sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
            con.execute("BEGIN")
            for name, sql in tables:
                con.execute(sql)
                if name not in GENERATED:
                    con.execute(f'INSERT INTO main."{name}" SELECT * FROM src."{name}"')
            src = Source(con)
            info = generate(con, src, kernels, ranges, ops, warmup, chunk, gap)
            names = {r[0] for r in tables}
            if "ANALYSIS_DETAILS" in names:
                con.execute("UPDATE ANALYSIS_DETAILS SET stopTime = ?, duration = ? - startTime",
                            (info["t1"] + 1_000_000, info["t1"] + 1_000_000))
            con.execute("COMMIT")
            con.execute("DETACH src")
            counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in info["rows"]}
            if counts != info["rows"] or counts[KERNEL] != kernels:
                raise SystemExit(f"row counts {counts} differ from what was generated {info['rows']}")
        finally:
            con.close()
        tmp.chmod(0o644)
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {**info, "source": str(source), "output": str(output), "bytes": output.stat().st_size,
            "seconds": round(time.perf_counter() - started, 1),
            "generator_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def check_nsys(nsys: str, path: Path) -> dict:
    """nsys stats -r nvtx_gpu_proj_sum must read the file; returns its time and row count."""
    prefix = Path(tempfile.gettempdir()) / f"nsysan-scale-check-{os.getpid()}"
    r = measure.run([nsys, "stats", "-r", "nvtx_gpu_proj_sum", "--format", "csv", "--force-overwrite", "true",
                     "-o", str(prefix), str(path)])
    out = Path(f"{prefix}_nvtx_gpu_proj_sum.csv")
    lines = out.read_text().splitlines() if out.exists() else []
    out.unlink(missing_ok=True)
    if len(lines) < 2:
        raise SystemExit(f"nsys stats produced no rows on {path}")
    print(f"nsys stats nvtx_gpu_proj_sum ok on {path.name}: {len(lines) - 1} range names; {measure.fmt(r)}")
    return {**r, "range_names": len(lines) - 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, help="K = R = scale x 1,000,000 (1, 4, 10)")
    parser.add_argument("--kernels", type=int, help="kernels K (default 1,000,000)")
    parser.add_argument("--ranges", type=int, help="NVTX ranges R, at most (default 1,000,000)")
    parser.add_argument("--ops", type=int, default=20, help="op ranges per forward / backward pass (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="batches named warmup_i (default 3)")
    parser.add_argument("--chunk", type=int, default=200_000, help="rows buffered before each insert")
    parser.add_argument("--sibling-gap-ns", type=int, help=f"CPU time between sibling ranges (default "
                        f"{SIBLING_GAP_NS}; 0 makes siblings touch, see SIBLING_GAP_NS)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="export to take schema and rows from")
    parser.add_argument("-o", "--output", type=Path, help="default bench/out/scale/synthetic_k<K>_r<R>.sqlite")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    parser.add_argument("--check-nsys", action="store_true", help="run nsys stats nvtx_gpu_proj_sum on it")
    parser.add_argument("--nsys", help="nsys executable (default: $NSYS, ~/.cache/nsysan/nsys-trixie, PATH)")
    args = parser.parse_args(argv)
    base = round((args.scale or 1) * 1_000_000)
    kernels, ranges = args.kernels or base, args.ranges or base
    output = args.output or default_output(kernels, ranges)
    if output.exists() and not args.force:
        print(f"{output} exists (use --force to rebuild)")
    else:
        # Roughly 150 bytes per kernel (kernel + launch row) and 50 per range, twice over while writing.
        need = 2 * (150 * kernels + 50 * ranges)
        free = shutil.disk_usage(output.parent if output.parent.exists() else HERE).free
        if need > free:
            raise SystemExit(f"need ~{need / 2**30:.1f} GiB free for {output}, have {free / 2**30:.1f} GiB")
        info = build(output, kernels, ranges, args.source, args.ops, args.warmup, args.chunk, args.sibling_gap_ns)
        print(f"wrote {output}: {info['bytes'] / 2**20:.0f} MiB in {info['seconds']} s "
              f"(generator peak RSS {info['generator_maxrss_mb']} MiB); {info['batches']} batches")
        for table, rows in info["rows"].items():
            print(f"  {table:32s} {rows:>10d}")
    if args.check_nsys:
        check_nsys(measure.find_nsys(args.nsys), output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
