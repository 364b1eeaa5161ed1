"""Column contracts for the nsys tables nsysan reads, and export-version detection.

nsys creates tables lazily and its columns change between versions, so every table we read is declared
here with the columns we use and their types. The loader turns each declaration into a DuckDB view that
always has exactly these columns: a column an export lacks becomes a typed NULL, a table it lacks becomes
an empty table. Analyses can therefore be written once against a fixed shape.
"""
from __future__ import annotations

from dataclasses import dataclass

# NVTX event types (ENUM_NSYS_EVENT_TYPE); stable across the export versions we support.
NVTX_PUSHPOP = 59
NVTX_STARTEND = 60
NVTXT_PUSHPOP = 70
NVTXT_STARTEND = 71
NVTX_DOMAIN_CREATE = 75

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
}

# What to tell a user whose report lacks a table an analysis needs.
CAPTURE_HINTS: dict[str, str] = {
    "NVTX_EVENTS": "no NVTX ranges: annotate the program with NVTX and profile with -t nvtx",
    "CUPTI_ACTIVITY_KIND_RUNTIME": "no CUDA trace: profile with -t cuda",
    "CUPTI_ACTIVITY_KIND_KERNEL": "no CUDA kernels: profile with -t cuda (and check the program launched kernels)",
    "CUPTI_ACTIVITY_KIND_MEMCPY": "no CUDA memory copies: profile with -t cuda",
    "StringIds": "no StringIds table: this is not a complete nsys export",
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
