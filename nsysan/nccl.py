"""NCCL in an nsys export: which kernels are communication and of which collective, and what NCCL's own NVTX
ranges record (the rank of each process, message sizes) when the export holds their payloads.

Kernel names: ``ncclDevKernel_AllReduce_Sum_f32_RING_LL`` (NCCL 2.12+), ``ncclKernel_AllReduce_RING_LL_Sum_float``
(older), ``ncclDevKernel_SendRecv``; the word after ``Kernel_`` is the collective. Newer NCCL releases also launch
``ncclDevKernel_Generic``: its collective comes from the NCCL NVTX range (``ncclAllReduce``, ...) that launched
it, when there is one.
"""
from __future__ import annotations

import polars as pl

from nsysan.load import Report, derived

KERNEL = r"^nccl(?:Dev)?Kernel_([A-Za-z]+)"
#: Collectives as NCCL names them, for the ``collective`` column.
COLLECTIVES = ("AllReduce", "Broadcast", "Reduce", "AllGather", "ReduceScatter", "SendRecv", "Send", "Recv",
               "AllToAll")
#: NCCL's bus-bandwidth factor per collective, for n ranks (NCCL's PERFORMANCE.md): busbw = algbw x factor.
BUS_FACTORS = {
    "AllReduce": lambda n: 2 * (n - 1) / n,
    "AllGather": lambda n: (n - 1) / n,
    "ReduceScatter": lambda n: (n - 1) / n,
    "Broadcast": lambda n: 1.0,
    "Reduce": lambda n: 1.0,
    "SendRecv": lambda n: 1.0,
    "Send": lambda n: 1.0,
    "Recv": lambda n: 1.0,
    "AllToAll": lambda n: (n - 1) / n,
}


def is_comm(name: pl.Expr) -> pl.Expr:
    """Whether a kernel (by its demangled or short name) is an NCCL communication kernel."""
    return name.str.contains(KERNEL).fill_null(False)


def collective(name: pl.Expr) -> pl.Expr:
    """The collective of an NCCL kernel (``AllReduce``, ...); ``Generic`` for NCCL's generic kernel; null for
    other kernels."""
    return name.str.extract(KERNEL, 1)


def bus_factor(collective_name: str, ranks: int) -> float | None:
    """NCCL's busbw / algbw for ``collective_name`` on ``ranks`` ranks; None when unknown or for one rank."""
    factor = BUS_FACTORS.get(collective_name)
    if factor is None or ranks < 2:  # a call only one rank made moves nothing between ranks
        return None
    return factor(ranks)


#: Fields of NCCL's NVTX payloads, as its schemas name them.
COMMUNICATOR, RANKS, RANK, DEVICE, MESSAGE = ("NCCL communicator ID", "No. of ranks", "Rank", "CUDA device",
                                              "Message size [bytes]")
PAYLOAD_SCHEMA = {"range_id": pl.Int64, "pid": pl.Int64, "name": pl.String, "communicator": pl.UInt64,
                  "ranks": pl.Int64, "rank": pl.Int64, "cuda_device": pl.Int64, "message_bytes": pl.Int64}
_PAYLOADS = """
SELECT e._row AS range_id, (e.globalTid >> 24) & 16777215 AS pid, coalesce(s.value, e.text) AS name,
       coalesce(e.jsonText, j.value) AS payload
FROM raw.NVTX_EVENTS AS e
LEFT JOIN raw.StringIds AS s ON s.id = e.textId
LEFT JOIN raw.StringIds AS j ON j.id = e.jsonTextId
WHERE e.eventType IN (59, 60, 70, 71) AND (e.jsonText IS NOT NULL OR e.jsonTextId IS NOT NULL)
"""


@derived
def payloads(report: Report) -> pl.DataFrame:
    """NCCL's NVTX ranges whose payload the export holds (``nsys export --include-json``, nsys 2025.1+):
    :data:`PAYLOAD_SCHEMA` columns, one row per range; fields a payload lacks are null. Empty when the export
    holds no payload (older nsys, or exported without ``--include-json``)."""
    import json

    rows = []
    for range_id, pid, name, text in report.sql(_PAYLOADS).fetchall():
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if not isinstance(data, dict) or COMMUNICATOR not in data:
            continue  # someone else's payload
        rows.append({"range_id": range_id, "pid": pid, "name": name, "communicator": _int(data.get(COMMUNICATOR)),
                     "ranks": _int(data.get(RANKS)), "rank": _int(data.get(RANK)),
                     "cuda_device": _int(data.get(DEVICE)), "message_bytes": _int(data.get(MESSAGE))})
    return pl.DataFrame(rows, schema=PAYLOAD_SCHEMA, orient="row") if rows else pl.DataFrame(schema=PAYLOAD_SCHEMA)


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@derived
def ranks_by_process(report: Report) -> dict[int, int]:
    """{pid: rank} as NCCL recorded it when each process created its communicators (of a process's several
    communicators, the largest: its rank in the whole job); {} when the export holds no NCCL payload."""
    created = payloads(report).filter(pl.col("rank").is_not_null())
    if created.is_empty():
        return {}
    largest = created.sort("ranks", descending=True, nulls_last=True).unique("pid", keep="first")
    return dict(largest.select("pid", "rank").iter_rows())


@derived
def message_sizes(report: Report) -> pl.DataFrame:
    """The message size of each NCCL kernel whose collective's NVTX range recorded one: ``global_pid``,
    ``correlation_id``, ``message_bytes`` (the innermost range that launched the kernel, by nsys's
    same-thread rule: NCCL pushes its range on the thread that enqueues the kernel)."""
    from nsysan.attribution import op_stages

    sized = payloads(report).filter(pl.col("message_bytes").is_not_null()).select("range_id", "message_bytes")
    if sized.is_empty():
        return pl.DataFrame(schema={"global_pid": pl.Int64, "correlation_id": pl.Int64, "message_bytes": pl.Int64})
    return (op_stages(report).join(sized, left_on="stage_range_id", right_on="range_id")
            .select("global_pid", "correlation_id", "message_bytes"))
