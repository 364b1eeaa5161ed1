#!/usr/bin/env python3
"""Build a large nsys SQLite export by repeating a real one in time.

The copy keeps every table of the source export and appends shifted copies of the rows of each
time-stamped table (NVTX_EVENTS and the CUPTI_ACTIVITY_KIND_* tables, i.e. everything
``nsys stats -r nvtx_gpu_proj_sum`` reads besides StringIds), until the kernel table holds at least
``--kernels`` rows. Copy ``k`` (k = 1 .. copies-1) has

* every time column (``start``, ``end``, ``timestamp``) shifted by ``k * (span + gap)``, where ``span``
  is the extent of the source's time-stamped rows (earliest start to latest end), so copies never overlap;
* every ``correlationId`` shifted by ``k * (max correlationId + 1)`` (max over all tables), so launches
  and their GPU ops still pair up one to one; NVTX ``rangeId`` is shifted likewise;
* everything else (StringIds references, thread and process ids, devices, streams) unchanged.

Threads and processes are the same in every copy, so the result looks like one long capture of the same
program. All copying is done in SQL inside SQLite (one ``INSERT ... SELECT`` per table); the file is
written under a temporary name and renamed when complete.

    python bench/make_large_report.py                      # -> bench/out/<source>_x<copies>.sqlite
    python bench/make_large_report.py --kernels 200000 -o /tmp/medium.sqlite --check-nsys
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import measure  # noqa: E402

DEFAULT_SOURCE = ROOT / "nsysan" / "sample" / "pipeline_gpu0_numa0_vit32x6x512.sqlite"

TIME_COLUMNS = ("start", "end", "timestamp")
ID_COLUMNS = ("correlationId",)            # shifted by k * (max correlationId over all tables + 1)
RANGE_ID_COLUMNS = {"NVTX_EVENTS": "rangeId"}  # shifted by k * (its own max + 1), when not null
KERNEL_TABLE = "CUPTI_ACTIVITY_KIND_KERNEL"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in con.execute(f"PRAGMA main.table_info({quote(table)})")]


def timed_tables(con: sqlite3.Connection) -> dict[str, list[str]]:
    """{table: its columns} for every table with at least one time column (and rows)."""
    names = [row[0] for row in con.execute(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    out = {}
    for name in names:
        cols = columns(con, name)
        if any(c in TIME_COLUMNS for c in cols):
            out[name] = cols
    return out


def extent(con: sqlite3.Connection, tables: dict[str, list[str]]) -> tuple[int, int]:
    """Earliest and latest timestamp over all time columns of ``tables``."""
    lo, hi = None, None
    for table, cols in tables.items():
        for c in cols:
            if c in TIME_COLUMNS:
                a, b = con.execute(f"SELECT min({quote(c)}), max({quote(c)}) FROM {quote(table)}").fetchone()
                if a is not None:
                    lo = a if lo is None else min(lo, a)
                    hi = b if hi is None else max(hi, b)
    if lo is None:
        raise SystemExit("source export has no time-stamped rows")
    return lo, hi


def max_of(con: sqlite3.Connection, tables: dict[str, list[str]], column: str) -> int:
    best = 0
    for table, cols in tables.items():
        if column in cols:
            value = con.execute(f"SELECT max({quote(column)}) FROM {quote(table)}").fetchone()[0]
            if value is not None:
                best = max(best, value)
    return best


def counts(con: sqlite3.Connection, tables) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {quote(t)}").fetchone()[0] for t in tables}


def build(source: Path, output: Path, kernels: int, gap_ns: int) -> dict:
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(source, tmp)
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = OFF")
            con.execute("PRAGMA synchronous = OFF")
            con.execute("PRAGMA temp_store = MEMORY")
            con.execute("PRAGMA cache_size = -262144")  # 256 MiB
            tables = timed_tables(con)
            before = counts(con, tables)
            source_kernels = before.get(KERNEL_TABLE, 0)
            if not source_kernels:
                raise SystemExit(f"{source}: no rows in {KERNEL_TABLE}")
            copies = max(1, math.ceil(kernels / source_kernels))
            lo, hi = extent(con, tables)
            period = (hi - lo) + gap_ns
            corr_step = max_of(con, tables, "correlationId") + 1
            # Ids of copy k then lie in [k * step, (k + 1) * step): copies never share a correlationId.
            for table, cols in tables.items():
                if "correlationId" in cols and (con.execute(
                        f"SELECT min(correlationId) FROM {quote(table)}").fetchone()[0] or 0) < 0:
                    raise SystemExit(f"{table}: negative correlationId; cannot shift copies apart")
            range_steps = {t: max_of(con, {t: tables[t]}, c) + 1 for t, c in RANGE_ID_COLUMNS.items() if t in tables
                           and c in tables[t]}

            con.execute("BEGIN")
            con.execute("CREATE TEMP TABLE copies (k INTEGER PRIMARY KEY)")
            con.execute("WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?) "
                        "INSERT INTO temp.copies SELECT k FROM n", (copies - 1,))
            for table, cols in tables.items():
                if copies == 1 or not before[table]:
                    continue
                select = []
                for c in cols:
                    q = quote(c)
                    if c in TIME_COLUMNS:
                        select.append(f"o.{q} + c.k * {period}")
                    elif c in ID_COLUMNS:
                        select.append(f"o.{q} + c.k * {corr_step}")
                    elif RANGE_ID_COLUMNS.get(table) == c:
                        select.append(f"o.{q} + c.k * {range_steps[table]}")
                    else:
                        select.append(f"o.{q}")
                con.execute(f"CREATE TEMP TABLE orig AS SELECT * FROM main.{quote(table)} ORDER BY rowid")
                col_list = ", ".join(quote(c) for c in cols)
                con.execute(f"INSERT INTO main.{quote(table)} ({col_list}) "
                            f"SELECT {', '.join(select)} FROM temp.copies AS c CROSS JOIN temp.orig AS o "
                            f"ORDER BY c.k, o.rowid")
                con.execute("DROP TABLE temp.orig")
            # Keep the capture's recorded duration consistent with the longer timeline.
            if "ANALYSIS_DETAILS" in {r[0] for r in con.execute("SELECT name FROM sqlite_master")}:
                cols = columns(con, "ANALYSIS_DETAILS")
                if {"stopTime", "duration"} <= set(cols):
                    extra = (copies - 1) * period
                    con.execute(f"UPDATE ANALYSIS_DETAILS SET stopTime = stopTime + {extra}, "
                                f"duration = duration + {extra}")
            con.execute("COMMIT")
            after = counts(con, tables)
            for table, n in before.items():
                if after[table] != n * copies:
                    raise SystemExit(f"{table}: {after[table]} rows, expected {n} x {copies} = {n * copies}")
        finally:
            con.close()
        tmp.chmod(0o644)
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "source": str(source), "output": str(output), "copies": copies, "period_ns": period,
        "correlation_step": corr_step, "rows_before": before, "rows_after": after,
        "bytes": output.stat().st_size, "seconds": round(time.perf_counter() - started, 2),
    }


def check_nsys(nsys: Path, path: Path) -> None:
    prefix = Path(tempfile.gettempdir()) / f"nsysan-bench-check-{os.getpid()}"
    cmd = [str(nsys), "stats", "-r", "nvtx_gpu_proj_sum", "--format", "csv", "--force-overwrite", "true",
           "-o", str(prefix), str(path)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    out = Path(f"{prefix}_nvtx_gpu_proj_sum.csv")
    lines = out.read_text().splitlines()
    out.unlink()
    if len(lines) < 2:
        raise SystemExit(f"nsys stats produced no rows on {path}")
    print(f"nsys stats ok on {path.name}: {len(lines) - 1} range names, {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="export to repeat")
    parser.add_argument("--kernels", type=int, default=1_080_000, help="at least this many kernels (default 1080000)")
    parser.add_argument("--gap-ns", type=int, default=1_000_000, help="idle time between copies (default 1 ms)")
    parser.add_argument("-o", "--output", type=Path, help="default: bench/out/<source>_x<copies>.sqlite")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    parser.add_argument("--check-nsys", action="store_true", help="run nsys stats nvtx_gpu_proj_sum on the result")
    parser.add_argument("--nsys", help="nsys executable (default: $NSYS, ~/.cache/nsysan/nsys-trixie, PATH)")
    args = parser.parse_args(argv)

    with sqlite3.connect(f"file:{args.source}?mode=ro", uri=True) as con:
        n = con.execute(f"SELECT count(*) FROM {KERNEL_TABLE}").fetchone()[0]
    copies = max(1, math.ceil(args.kernels / n))
    output = args.output or HERE / "out" / f"{args.source.name.removesuffix('.sqlite')}_x{copies}.sqlite"
    if output.exists() and not args.force:
        print(f"{output} exists (use --force to rebuild)")
    else:
        info = build(args.source, output, args.kernels, args.gap_ns)
        print(f"wrote {output}: {info['copies']} copies, {info['rows_after'].get(KERNEL_TABLE)} kernels, "
              f"{info['bytes'] / 2**20:.0f} MiB in {info['seconds']} s")
        for table, rows in info["rows_after"].items():
            print(f"  {table:32s} {info['rows_before'][table]:>8d} -> {rows:>10d}")
    if args.check_nsys:
        check_nsys(Path(measure.find_nsys(args.nsys)), output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
