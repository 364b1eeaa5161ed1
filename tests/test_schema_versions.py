"""The loader across export schemas and formats, on live captures of workloads/cpu_nvtx.py (conftest).

nsys 2022.4 (export schema 3.0, metadata in EXPORT_META_DATA) and nsys 2023.4 (schema 3.7+, META_DATA_EXPORT)
profile the same workload with the same arguments; 2023.4's report is also exported as a parquetdir folder.
Timings differ between captures, so captures are compared by what the workload fixes: which ranges, how
many, of which style, nested how. Two exports of one report must give the very same trace.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import nsysan
from nsysan.analyses.latency import latency_summary, range_trace
from nsysan.selection import Selection

EVERYTHING = Selection.everything()


def trace_of(export: Path) -> pl.DataFrame:
    with nsysan.open(export) as report:
        return range_trace(report)


def version_of(export: Path):
    with nsysan.open(export) as report:
        return report.version


def shape(trace: pl.DataFrame) -> pl.DataFrame:
    """What a capture of the workload fixes, whatever the timing: instances per (range, style, parent, level),
    and the number of threads each range ran on."""
    return (trace.group_by("range", "style", "parent", "level")
            .agg(pl.len().alias("instances"), pl.col("tid").n_unique().alias("threads"))
            .sort("range", "style", "parent", "level", nulls_last=True))


def assert_version(export: Path, product_prefix: str) -> None:
    version = version_of(export)
    assert version.product is not None and version.product.startswith(product_prefix), version
    assert version.schema is not None and len(version.schema) == 3, version
    assert all(isinstance(part, int) for part in version.schema), version
    assert version.schema >= (3, 0, 0), version


def test_2022_export_version(cpu_capture_2022) -> None:
    assert_version(cpu_capture_2022.sqlite, "2022.4")


@pytest.mark.parametrize("form", ["sqlite", "parquetdir"])
def test_2023_export_version(form: str, cpu_capture_2023) -> None:
    assert_version(getattr(cpu_capture_2023, form), "2023.4")


def test_schema_versions_differ(cpu_capture_2022, cpu_capture_2023) -> None:
    """The two releases really are two export schemas (else the comparison below proves little)."""
    old, new = version_of(cpu_capture_2022.sqlite), version_of(cpu_capture_2023.sqlite)
    assert old.schema < new.schema, (old, new)
    assert version_of(cpu_capture_2023.parquetdir) == new


def test_same_ranges_across_nsys_versions(cpu_capture_2022, cpu_capture_2023) -> None:
    """Same workload, same arguments: 2022.4 and 2023.4 exports give the same ranges per name and style,
    with the same nesting (parent name and level) and the same number of threads."""
    old, new = trace_of(cpu_capture_2022.sqlite), trace_of(cpu_capture_2023.sqlite)
    assert not old.is_empty()
    counts = {}
    for name, trace in (("2022.4", old), ("2023.4", new)):
        counts[name] = dict(trace.group_by("range", "style").len().select(
            pl.concat_str("range", "style", separator="/"), "len").iter_rows())
    assert counts["2022.4"] == counts["2023.4"]
    same = shape(old).equals(shape(new))
    assert same, f"2022.4:\n{shape(old)}\n2023.4:\n{shape(new)}"
    # One process made all ranges in each capture.
    assert old["pid"].n_unique() == new["pid"].n_unique() == 1


def _positions(trace: pl.DataFrame) -> pl.DataFrame:
    """The trace with range_id / parent_id replaced by the row number of the range / its parent."""
    index = trace.select("range_id", row=pl.int_range(pl.len(), dtype=pl.Int64))
    return (trace.join(index, on="range_id", how="left")
            .join(index.rename({"range_id": "parent_id", "row": "parent_row"}), on="parent_id", how="left")
            .drop("range_id", "parent_id"))


def test_parquetdir_trace_equals_sqlite_trace(cpu_capture_2023) -> None:
    """Both exports of one report give the same trace: every range with the same times, names, styles,
    threads, levels and parents (ids compared by the rows they point at; see the next test for the ids)."""
    from_sqlite, from_parquet = trace_of(cpu_capture_2023.sqlite), trace_of(cpu_capture_2023.parquetdir)
    assert not from_sqlite.is_empty()
    assert from_sqlite.columns == from_parquet.columns
    assert from_sqlite.schema == from_parquet.schema
    a, b = _positions(from_sqlite), _positions(from_parquet)
    same = a.equals(b)
    assert same, f"sqlite:\n{a}\nparquetdir:\n{b}"


def test_parquetdir_range_ids_equal_sqlite_range_ids(cpu_capture_2023) -> None:
    """range_id / parent_id name the same range in both exports of one report.

    In the SQLite export they are NVTX_EVENTS rowids, which is also what nsys's own reports call RangeId
    (nvtx_pushpop_trace, nvtx_gpu_proj_trace; test_reconcile_nsys checks that), so ids from a parquetdir
    export must be the same numbers for a trace to mean the same thing whichever export was read."""
    from_sqlite, from_parquet = trace_of(cpu_capture_2023.sqlite), trace_of(cpu_capture_2023.parquetdir)
    ids = ["range", "start_ns", "range_id", "parent_id"]
    a, b = from_sqlite.select(ids), from_parquet.select(ids)
    same = a.equals(b)
    assert same, f"range ids differ between the exports:\nsqlite:\n{a.head(5)}\nparquetdir:\n{b.head(5)}"


def test_parquetdir_summary_equals_sqlite_summary(cpu_capture_2023) -> None:
    """latency_summary over both exports of one report is identical (statistics included)."""
    a = latency_summary(trace_of(cpu_capture_2023.sqlite), by=(), select=EVERYTHING)
    b = latency_summary(trace_of(cpu_capture_2023.parquetdir), by=(), select=EVERYTHING)
    assert not a.is_empty()
    same = a.equals(b)
    assert same, f"sqlite:\n{a}\nparquetdir:\n{b}"
