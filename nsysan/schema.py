"""Column contracts for the nsys tables nsysan reads, and export-version detection.

nsys creates tables lazily and its columns change between versions, so every table we read is declared
here with the columns we use and their types. The loader turns each declaration into a DuckDB view that
always has exactly these columns: a column an export lacks becomes a typed NULL, a table it lacks becomes
an empty table. Analyses can therefore be written once against a fixed shape.

A typed NULL must never stand in for data that the export lost, so :data:`NEEDS` lists, per view and raw
table, the columns without which its numbers mean nothing (a present table lacking one is damaged), and
:data:`ROW_RULES` what every row of a table must satisfy (:mod:`nsysan.quality` checks both).
"""
from __future__ import annotations

from dataclasses import dataclass

# NVTX event types (ENUM_NSYS_EVENT_TYPE); stable across the export versions we support.
NVTX_PUSHPOP = 59
NVTX_STARTEND = 60
NVTXT_PUSHPOP = 70
NVTXT_STARTEND = 71
NVTX_DOMAIN_CREATE = 75

RANGE_EVENT_TYPES = (NVTX_PUSHPOP, NVTX_STARTEND, NVTXT_PUSHPOP, NVTXT_STARTEND)
#: The newest export schema (major, minor) nsysan is tested against (nsys 2025.3); newer ones get a warning.
NEWEST_TESTED_SCHEMA = (3, 20)

# A globalTid packs (hardware/VM id, pid, tid); the process part is everything above the low 24 bits.
PROCESS_MASK = 0xFFFFFFFFFF000000

RAW_TABLES: dict[str, dict[str, str]] = {
    "NVTX_EVENTS": {
        "start": "BIGINT", "end": "BIGINT", "eventType": "INTEGER", "text": "VARCHAR", "textId": "BIGINT",
        "domainId": "BIGINT", "globalTid": "BIGINT", "endGlobalTid": "BIGINT",
        # NVTX extended payloads as JSON (nsys export --include-json): NCCL's ranks and message sizes.
        "jsonText": "VARCHAR", "jsonTextId": "BIGINT",
    },
    "StringIds": {"id": "BIGINT", "value": "VARCHAR"},
    "CUPTI_ACTIVITY_KIND_KERNEL": {
        "start": "BIGINT", "end": "BIGINT", "deviceId": "BIGINT", "contextId": "BIGINT", "streamId": "BIGINT",
        "correlationId": "BIGINT", "globalPid": "BIGINT", "demangledName": "BIGINT", "shortName": "BIGINT",
        "mangledName": "BIGINT", "gridX": "BIGINT", "gridY": "BIGINT", "gridZ": "BIGINT",
        "blockX": "BIGINT", "blockY": "BIGINT", "blockZ": "BIGINT", "registersPerThread": "BIGINT",
        "graphNodeId": "BIGINT",
    },
    "CUPTI_ACTIVITY_KIND_MEMCPY": {
        "start": "BIGINT", "end": "BIGINT", "deviceId": "BIGINT", "contextId": "BIGINT", "streamId": "BIGINT",
        "correlationId": "BIGINT", "globalPid": "BIGINT", "bytes": "BIGINT", "copyKind": "INTEGER",
        "srcKind": "INTEGER", "dstKind": "INTEGER", "srcDeviceId": "BIGINT", "dstDeviceId": "BIGINT",
    },
    "CUPTI_ACTIVITY_KIND_MEMSET": {
        "start": "BIGINT", "end": "BIGINT", "deviceId": "BIGINT", "contextId": "BIGINT", "streamId": "BIGINT",
        "correlationId": "BIGINT", "globalPid": "BIGINT", "bytes": "BIGINT", "memKind": "INTEGER",
        "value": "BIGINT",
    },
    "CUPTI_ACTIVITY_KIND_RUNTIME": {
        "start": "BIGINT", "end": "BIGINT", "globalTid": "BIGINT", "correlationId": "BIGINT",
        "nameId": "BIGINT", "returnValue": "BIGINT",
    },
    "ENUM_CUDA_MEMCPY_OPER": {"id": "INTEGER", "name": "VARCHAR", "label": "VARCHAR"},
    "ENUM_CUDA_MEM_KIND": {"id": "INTEGER", "name": "VARCHAR", "label": "VARCHAR"},
    "TARGET_INFO_GPU": {
        "id": "BIGINT", "name": "VARCHAR", "busLocation": "VARCHAR", "uuid": "VARCHAR", "chipName": "VARCHAR",
        "totalMemory": "BIGINT", "memoryBandwidth": "BIGINT", "smCount": "BIGINT", "clockRate": "BIGINT",
        "computeMajor": "BIGINT", "computeMinor": "BIGINT", "cuDevice": "BIGINT",
    },
    "ThreadNames": {"nameId": "BIGINT", "globalTid": "BIGINT"},
    "PROCESSES": {"globalPid": "BIGINT", "pid": "BIGINT", "name": "VARCHAR"},
    "TARGET_INFO_SESSION_START_TIME": {"utcEpochNs": "BIGINT", "utcTime": "VARCHAR", "localTime": "VARCHAR"},
    # Export metadata lives in META_DATA_EXPORT since nsys 2023; 2022.x called it EXPORT_META_DATA.
    "META_DATA_EXPORT": {"name": "VARCHAR", "value": "VARCHAR"},
    "EXPORT_META_DATA": {"name": "VARCHAR", "value": "VARCHAR"},
    # What the capture traced (nsys 2023+): PROCESS_<n>:COLLECT_NVTX_TRACE = true, ...
    "META_DATA_CAPTURE": {"name": "VARCHAR", "value": "VARCHAR"},
    # The traced span: every event of a capture lies within [startTime, stopTime].
    "ANALYSIS_DETAILS": {"duration": "BIGINT", "startTime": "BIGINT", "stopTime": "BIGINT"},
}

_OP_TIMES = {"start": "GPU op start times", "end": "GPU op end times", "deviceId": "the GPU of each op",
             "streamId": "the stream of each op", "correlationId": "which CUDA call launched each op",
             "globalPid": "the process of each op"}
_NVTX = {"start": "range start times", "end": "range end times", "eventType": "which NVTX events are ranges",
         "globalTid": "the thread of each range"}
_RUNTIME = {"start": "CUDA call times", "end": "CUDA call times", "globalTid": "the thread of each CUDA call",
            "correlationId": "which GPU ops each CUDA call launched", "nameId": "CUDA API names"}
_STRINGS = {"id": "names (StringIds)", "value": "names (StringIds)"}

#: Columns a present table must have, per view (or raw table) that reads it, and what cannot be computed
#: without each. nsys has written all of them since 2022.4 (export schema 3.0); an export lacking one is damaged.
NEEDS: dict[str, dict[str, dict[str, str]]] = {
    "nvtx_ranges": {"NVTX_EVENTS": {**_NVTX, "domainId": "range names in NVTX domains",
                                    "endGlobalTid": "which ranges ended on another thread"}},
    "kernels": {"CUPTI_ACTIVITY_KIND_KERNEL": {
        **{c: why.replace("GPU op", "kernel").replace("each op", "each kernel") for c, why in _OP_TIMES.items()},
        "demangledName": "kernel names", "shortName": "short kernel names"}},
    "memcpy": {"CUPTI_ACTIVITY_KIND_MEMCPY": {
        **_OP_TIMES, "bytes": "copy sizes and bandwidth", "copyKind": "copy directions",
        "srcKind": "source memory kinds (pageable, pinned, ...)", "dstKind": "destination memory kinds"}},
    "memset": {"CUPTI_ACTIVITY_KIND_MEMSET": {**_OP_TIMES, "bytes": "memset sizes", "memKind": "memset memory kinds"}},
    "gpu_ops": {t: _OP_TIMES for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY",
                                       "CUPTI_ACTIVITY_KIND_MEMSET")},
    "runtime": {"CUPTI_ACTIVITY_KIND_RUNTIME": _RUNTIME},
    "CUPTI_ACTIVITY_KIND_RUNTIME": {"CUPTI_ACTIVITY_KIND_RUNTIME": _RUNTIME},
    "NVTX_EVENTS": {"NVTX_EVENTS": _NVTX},
    "StringIds": {"StringIds": _STRINGS},
}
#: Tables each tidy view (and each raw table) reads: querying one checks these first.
READS: dict[str, tuple[str, ...]] = {
    "nvtx_ranges": ("StringIds", "NVTX_EVENTS"),
    "kernels": ("StringIds", "CUPTI_ACTIVITY_KIND_KERNEL"),
    "memcpy": ("ENUM_CUDA_MEMCPY_OPER", "ENUM_CUDA_MEM_KIND", "CUPTI_ACTIVITY_KIND_MEMCPY"),
    "memset": ("ENUM_CUDA_MEM_KIND", "CUPTI_ACTIVITY_KIND_MEMSET"),
    "gpu_ops": ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"),
    "runtime": ("StringIds", "CUPTI_ACTIVITY_KIND_RUNTIME"),
    "gpus": ("TARGET_INFO_GPU",),
}


@dataclass(frozen=True)
class RowRules:
    """What every row of a table must satisfy; rows that do not are left out (:mod:`nsysan.quality`)."""

    #: What the rows are, in messages ("kernels", "NVTX events").
    what: str
    #: Columns nsys always fills; a row with a NULL in one of them (where the export has the column) is damaged.
    never_null: tuple[str, ...] = ()
    #: The table has start/end times: rows ending before they start, or lying outside the capture, are damaged.
    times: bool = False
    #: Rows equal in these columns are one row written twice (all columns when empty); the first is kept.
    key: tuple[str, ...] = ()
    #: Byte counts: a negative one, or one beyond any real copy (1 PiB), is damaged.
    sizes: tuple[str, ...] = ()


_OP_KEY = ("start", "end", "deviceId", "streamId", "correlationId", "globalPid")
ROW_RULES: dict[str, RowRules] = {
    "NVTX_EVENTS": RowRules("NVTX events", ("start", "eventType", "globalTid"), times=True),
    "CUPTI_ACTIVITY_KIND_KERNEL": RowRules("kernels", (*_OP_KEY, "demangledName", "shortName"), True, _OP_KEY),
    "CUPTI_ACTIVITY_KIND_MEMCPY": RowRules("memory copies", (*_OP_KEY, "bytes", "copyKind", "srcKind", "dstKind"),
                                           True, _OP_KEY, ("bytes",)),
    "CUPTI_ACTIVITY_KIND_MEMSET": RowRules("memsets", (*_OP_KEY, "bytes"), True, _OP_KEY, ("bytes",)),
    "CUPTI_ACTIVITY_KIND_RUNTIME": RowRules("CUDA API calls", ("start", "end", "globalTid", "correlationId", "nameId"),
                                            True, ("start", "end", "globalTid", "correlationId")),
    # Lookup tables: one row per id (a second row for an id would multiply the rows joined to it).
    "StringIds": RowRules("strings", ("id",), key=("id",)),
    "ENUM_CUDA_MEMCPY_OPER": RowRules("copy kinds", ("id",), key=("id",)),
    "ENUM_CUDA_MEM_KIND": RowRules("memory kinds", ("id",), key=("id",)),
    "TARGET_INFO_GPU": RowRules("GPUs", ("id",), key=("id",)),
}

# What to tell a user whose report lacks a table an analysis needs.
CAPTURE_HINTS: dict[str, str] = {
    "NVTX_EVENTS": "no NVTX ranges: annotate the program with NVTX and profile with -t nvtx",
    "CUPTI_ACTIVITY_KIND_RUNTIME": "no CUDA trace: profile with -t cuda",
    "CUPTI_ACTIVITY_KIND_KERNEL": "no CUDA kernels: profile with -t cuda (and check the program launched kernels)",
    "CUPTI_ACTIVITY_KIND_MEMCPY": "no CUDA memory copies: profile with -t cuda",
    "StringIds": "no StringIds table: this is not a complete nsys export",
    "CUPTI_ACTIVITY_KIND_MEMSET": "no CUDA memsets: profile with -t cuda",
}


@dataclass(frozen=True)
class ExportVersion:
    """The schema version nsys wrote into the export, and the nsys release that wrote it."""

    schema: tuple[int, int, int] | None
    product: str | None

    def __str__(self) -> str:
        schema = ".".join(map(str, self.schema)) if self.schema else "unknown schema"
        return f"nsys {self.product or 'unknown'} (export schema {schema})"


def parse_export_version(metadata: dict[str, str]) -> ExportVersion:
    """Read the export's version from its metadata key/value pairs (either metadata table's rows)."""
    schema = None
    raw = metadata.get("EXPORT_SCHEMA_VERSION")
    if raw:
        try:
            schema = tuple(int(part) for part in raw.split(".")[:3])  # type: ignore[assignment]
        except ValueError:
            schema = None
    product = metadata.get("EXPORT_PRODUCT_VERSION") or metadata.get("NSYS_VERSION")
    return ExportVersion(schema=schema, product=product)
