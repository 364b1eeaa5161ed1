"""Write tiny nsys-like SQLite exports from Python, for tests whose answers are worked out by hand.

    b = ExportBuilder()
    outer = b.range("outer", 0, 100)                       # push/pop range on the main thread
    b.launch(MAIN_TID, 10, 20, 30, 40, name="gemm")         # a cudaLaunchKernel call and the kernel it ran
    b.write(tmp_path / "case.sqlite")

Only the tables and columns nsysan reads are written (same names and types as nsys 2023+ exports), and,
as nsys does, a table is created only when it has rows. NVTX rows get rowids in the order they were
added, so ``range(...)`` returns the ``range_id`` nsysan will report for that range.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

MAIN_PID = 100
MAIN_TID = 101
#: Real exports carry a hardware/VM id above the pid bits; keep one so that tests exercise the masking.
HARDWARE_BITS = 1 << 48

MARK, PUSHPOP, STARTEND, DOMAIN_CREATE = 34, 59, 60, 75
OP_TABLES = {"kernel": "CUPTI_ACTIVITY_KIND_KERNEL", "memcpy": "CUPTI_ACTIVITY_KIND_MEMCPY",
             "memset": "CUPTI_ACTIVITY_KIND_MEMSET"}
LAUNCH_API = {"kernel": "cudaLaunchKernel", "memcpy": "cudaMemcpyAsync", "memset": "cudaMemsetAsync"}

DDL = {
    "StringIds": "id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL",
    "NVTX_EVENTS": "start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL, text TEXT, "
                   "globalTid INTEGER, endGlobalTid INTEGER, textId INTEGER, domainId INTEGER",
    "CUPTI_ACTIVITY_KIND_RUNTIME": "start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER NOT NULL, "
                                   "globalTid INTEGER, correlationId INTEGER, nameId INTEGER NOT NULL, "
                                   "returnValue INTEGER NOT NULL",
    "CUPTI_ACTIVITY_KIND_KERNEL": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, "
                                  "contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, "
                                  "globalPid INTEGER, demangledName INTEGER NOT NULL, shortName INTEGER NOT NULL, "
                                  "mangledName INTEGER, gridX INTEGER, gridY INTEGER, gridZ INTEGER, "
                                  "blockX INTEGER, blockY INTEGER, blockZ INTEGER, registersPerThread INTEGER, "
                                  "graphNodeId INTEGER",
    "CUPTI_ACTIVITY_KIND_MEMCPY": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, "
                                  "contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, "
                                  "globalPid INTEGER, bytes INTEGER NOT NULL, copyKind INTEGER NOT NULL, "
                                  "srcKind INTEGER, dstKind INTEGER, srcDeviceId INTEGER, dstDeviceId INTEGER",
    "CUPTI_ACTIVITY_KIND_MEMSET": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, "
                                  "contextId INTEGER NOT NULL, streamId INTEGER NOT NULL, correlationId INTEGER, "
                                  "globalPid INTEGER, value INTEGER NOT NULL, bytes INTEGER NOT NULL, "
                                  "memKind INTEGER",
    "ENUM_CUDA_MEMCPY_OPER": "id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT",
    "ENUM_CUDA_MEM_KIND": "id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT",
    "META_DATA_EXPORT": "name TEXT NOT NULL, value TEXT",
    "ANALYSIS_DETAILS": "globalVid INTEGER NOT NULL, duration INTEGER NOT NULL, startTime INTEGER NOT NULL, "
                        "stopTime INTEGER NOT NULL",
}
MEMCPY_OPER = [(0, "CUDA_MEMCPY_KIND_UNKNOWN", "Unknown"), (1, "CUDA_MEMCPY_KIND_HTOD", "Host-to-Device"),
               (2, "CUDA_MEMCPY_KIND_DTOH", "Device-to-Host"), (8, "CUDA_MEMCPY_KIND_DTOD", "Device-to-Device")]
MEM_KIND = [(0, "CUDA_MEMOPR_MEMORY_KIND_PAGEABLE", "Pageable"), (1, "CUDA_MEMOPR_MEMORY_KIND_PINNED", "Pinned"),
            (2, "CUDA_MEMOPR_MEMORY_KIND_DEVICE", "Device")]


def gtid(pid: int = MAIN_PID, tid: int = MAIN_TID) -> int:
    """nsys's globalTid of a thread: hardware bits | pid << 24 | tid."""
    return HARDWARE_BITS | (pid << 24) | tid


def gpid(pid: int = MAIN_PID) -> int:
    """nsys's globalPid of a process: its globalTid with the tid bits cleared."""
    return HARDWARE_BITS | (pid << 24)


@dataclass
class ExportBuilder:
    """Collects rows, then :meth:`write` turns them into an SQLite file shaped like an nsys export."""

    schema_version: str = "3.11.1"
    with_metadata: bool = True
    strings: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[tuple]] = field(default_factory=dict)
    next_correlation_id: int = 1

    # -- NVTX -------------------------------------------------------------------------------------------
    def range(self, name: str, start: int, end: int | None, *, tid: int = MAIN_TID, pid: int = MAIN_PID,
              style: str = "pushpop", domain_id: int | None = None, end_tid: int | None = None,
              registered: bool = False) -> int:
        """Add an NVTX range; return its range_id (the NVTX_EVENTS rowid).

        ``style`` is "pushpop" (eventType 59) or "startend" (60); ``end_tid`` records that the range was
        ended on another thread (endGlobalTid); ``registered`` names it through StringIds (textId)
        instead of ``text``.
        """
        event_type = {"pushpop": PUSHPOP, "startend": STARTEND}[style]
        text, text_id = (None, self.string(name)) if registered else (name, None)
        end_gtid = gtid(pid, end_tid) if end_tid is not None else None
        return self._add("NVTX_EVENTS", (start, end, event_type, text, gtid(pid, tid), end_gtid, text_id,
                                         domain_id if domain_id is not None else 0))

    def mark(self, name: str, at: int, *, tid: int = MAIN_TID, pid: int = MAIN_PID) -> None:
        """Add an NVTX mark (eventType 34): an instant, not a range."""
        self._add("NVTX_EVENTS", (at, None, MARK, name, gtid(pid, tid), None, None, 0))

    def domain(self, name: str, domain_id: int, *, at: int = 0, tid: int = MAIN_TID, pid: int = MAIN_PID) -> None:
        """Add the domain-create event (eventType 75) that names ``domain_id`` in process ``pid``."""
        self._add("NVTX_EVENTS", (at, None, DOMAIN_CREATE, name, gtid(pid, tid), None, None, domain_id))

    # -- CUDA -------------------------------------------------------------------------------------------
    def call(self, tid: int, start: int, end: int, *, pid: int = MAIN_PID, api: str = "cudaLaunchKernel",
             correlation_id: int | None = None) -> int:
        """Add a CUDA API call (CUPTI_ACTIVITY_KIND_RUNTIME); return its correlation id."""
        if correlation_id is None:
            correlation_id = self.next_correlation_id
        self.next_correlation_id = max(self.next_correlation_id, correlation_id + 1)
        self._add("CUPTI_ACTIVITY_KIND_RUNTIME", (start, end, 1, gtid(pid, tid), correlation_id, self.string(api), 0))
        return correlation_id

    def op(self, correlation_id: int, start: int, end: int, *, kind: str = "kernel", name: str = "kernel",
           pid: int = MAIN_PID, device: int = 0, stream: int = 7, nbytes: int = 1024) -> None:
        """Add a GPU operation (kernel, memcpy or memset) run for the call ``correlation_id`` of ``pid``."""
        common = (start, end, device, 1, stream, correlation_id, gpid(pid))
        if kind == "kernel":
            row = (*common, self.string(name), self.string(name.split("<")[0].split("(")[0]),
                   self.string("_Z" + name), 1, 1, 1, 128, 1, 1, 32, None)
        elif kind == "memcpy":
            row = (*common, nbytes, 1, 1, 2, None, device)  # pinned host -> device
        elif kind == "memset":
            row = (*common, 0, nbytes, 2)
        else:
            raise ValueError(f"unknown op kind {kind!r}")
        self._add(OP_TABLES[kind], row)

    def launch(self, tid: int, call_start: int, call_end: int, op_start: int, op_end: int, *,
               kind: str = "kernel", name: str = "kernel", pid: int = MAIN_PID,
               correlation_id: int | None = None) -> int:
        """A CUDA call on thread ``tid`` and the one GPU op it launched; return the correlation id."""
        cid = self.call(tid, call_start, call_end, pid=pid, api=LAUNCH_API[kind], correlation_id=correlation_id)
        self.op(cid, op_start, op_end, kind=kind, name=name, pid=pid)
        return cid

    # -- output -----------------------------------------------------------------------------------------
    def string(self, value: str) -> int:
        """The StringIds id of ``value`` (added on first use)."""
        if value not in self.strings:
            self.strings[value] = len(self.strings) + 1
        return self.strings[value]

    def _add(self, table: str, row: tuple) -> int:
        self.rows.setdefault(table, []).append(row)
        return len(self.rows[table])

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        tables = dict(self.rows)
        if self.strings:
            tables["StringIds"] = [(i, s) for s, i in self.strings.items()]
        if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables or "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
            tables["ENUM_CUDA_MEMCPY_OPER"] = MEMCPY_OPER
            tables["ENUM_CUDA_MEM_KIND"] = MEM_KIND
        if self.with_metadata:
            major, minor, micro = self.schema_version.split(".")
            tables["META_DATA_EXPORT"] = [
                ("EXPORT_PRODUCT_NAME", "NVIDIA Nsight Systems"), ("EXPORT_PRODUCT_VERSION", "2023.4.4.54"),
                ("EXPORT_SCHEMA_VERSION", self.schema_version), ("EXPORT_SCHEMA_VERSION_MAJOR", major),
                ("EXPORT_SCHEMA_VERSION_MINOR", minor), ("EXPORT_SCHEMA_VERSION_MICRO", micro)]
            # The traced span, as nsys records it: every event lies inside it.
            times = [t for table in ("NVTX_EVENTS", "CUPTI_ACTIVITY_KIND_RUNTIME", *OP_TABLES.values())
                     for row in self.rows.get(table, []) for t in row[:2] if t is not None]
            if times:
                tables["ANALYSIS_DETAILS"] = [(HARDWARE_BITS, max(times) - min(times), min(times), max(times))]
        con = sqlite3.connect(path)
        try:
            for table, rows in tables.items():
                con.execute(f"CREATE TABLE {table} ({DDL[table]})")
                marks = ", ".join("?" * len(rows[0]))
                con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            con.commit()
        finally:
            con.close()
        return path
