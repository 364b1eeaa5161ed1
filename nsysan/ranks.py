"""Which process of a report is which rank, and on which GPU: the keys that keep ranks apart.

A *rank* is a process that took part in the profiled job (it emitted NVTX ranges or launched GPU work):
processes that share one GPU (gloo DDP on one device, two inference servers) are separate ranks. Per report,
:func:`processes` gives each such process

* ``device_id``: the CUDA device it used (the one most of its GPU ops ran on; null for a CPU-only process);
* ``rank`` and ``rank_source``, from the first of
  1. ``nccl``: NCCL's own NVTX payload (``ncclCommInitRank*`` records the rank of each process's communicator);
  2. ``sidecar``: a ``ranks`` mapping ``{pid: rank}`` in the report's ``<report>.meta.json`` (nsysan's
     distributed workloads write it);
  3. ``device order``: processes numbered 0, 1, ... by CUDA device, then by pid (torchrun gives rank r device r
     unless told otherwise; say so when the ranks matter and the export does not record them).
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from nsysan.load import Report, derived
from nsysan.metadata import sidecar_path
from nsysan.sql import query

COLUMNS = ("pid", "device_id", "rank", "rank_source")
#: Grouping keys every analysis whose rows carry a ``pid`` provides.
KEYS = ("rank", "device_id")
#: Keys that keep the ranks of a report apart when grouped by (one process per GPU, as DDP runs).
SEPARATING = ("rank", "pid", "device_id", "src_device_id", "dst_device_id")
SCHEMA = {"pid": pl.Int64, "device_id": pl.Int64, "rank": pl.Int64, "rank_source": pl.String}


@derived
def device_of_process(report: Report) -> pl.DataFrame:
    """Every process with NVTX ranges or GPU ops: ``pid`` and ``device_id`` (most of its ops; null if none)."""
    return report.frame(query("process_devices")).cast({"pid": pl.Int64, "device_id": pl.Int64})


@derived
def processes(report: Report) -> pl.DataFrame:
    """The ranks of ``report``: :data:`COLUMNS`, one row per process (rules in the module doc)."""
    found = device_of_process(report)
    recorded = _nccl_ranks(report)
    source = "nccl"
    if not recorded:
        recorded, source = sidecar_ranks(report.path), "sidecar"
    if recorded and set(found["pid"].to_list()) <= set(recorded):
        return found.with_columns(rank=pl.col("pid").replace_strict(recorded, return_dtype=pl.Int64),
                                  rank_source=pl.lit(source)).select(COLUMNS)
    ordered = found.sort(pl.col("device_id").is_null(), "device_id", "pid")
    return ordered.with_columns(rank=pl.int_range(pl.len(), dtype=pl.Int64),
                                rank_source=pl.lit("device order")).select(COLUMNS).sort("pid")


def sidecar_ranks(path: Path) -> dict[int, int]:
    """The ranks the report's sidecar records: ``"ranks"`` as a list of ``{"rank": r, "pid": p, ...}`` (what
    nsysan's distributed workloads write) or a mapping ``{pid: rank}``; {} when there is none or it is neither
    (the sidecar's other fields are checked where run metadata is read)."""
    try:
        recorded = json.loads(sidecar_path(path).read_text())["ranks"]
        if isinstance(recorded, list):
            return {int(entry["pid"]): int(entry["rank"]) for entry in recorded}
        return {int(pid): int(rank) for pid, rank in recorded.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _nccl_ranks(report: Report) -> dict[int, int]:
    """{pid: rank} from NCCL's NVTX payloads, when the export holds them (empty otherwise)."""
    from nsysan import nccl

    return nccl.ranks_by_process(report)


def attach(frame: pl.DataFrame, ranks: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (rows with a ``pid``) with the ``rank`` and, where it has none, ``device_id`` of each row's
    process."""
    if "pid" not in frame.columns or frame.is_empty():
        return frame
    wanted = ["pid", *(c for c in ("rank", "device_id") if c not in frame.columns)]
    if len(wanted) == 1:
        return frame
    return frame.join(ranks.select(wanted), on="pid", how="left")
