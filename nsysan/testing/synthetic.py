"""SYNTHETIC exports with a known answer, made by changing GPU op durations of a real export.

Our GPU machine has a single NUMA node, so there is no real remote-node capture. To test the NUMA
penalty and the comparison maths, :func:`stretch_copies` copies a real export and multiplies the
duration of every memcpy (and, if asked, every kernel) by a chosen factor: each op keeps its start and
only its end moves; nothing else changes (CPU ranges, API calls and every other op stay where they were).
The known answers, for a copy stretched by ``factor`` against its source:

* bandwidth of every copy: x 1/factor (to the rounding of the new end to a whole ns);
* range (CPU) times and throughput: unchanged;
* GPU time of stages without copies (e.g. ``forward``): unchanged; of stages with copies: recompute from
  the modified tables (a stretched copy may now overlap the op after it, since nothing was shifted).

The files are written where the caller says (a test's temporary folder), never into ``nsysan/sample``,
each with a ``<report>.SYNTHETIC.txt`` note beside it saying what was changed.
"""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from nsysan.metadata import report_stem, sidecar_path

_NUMA_IN_NAME = re.compile(r"_numa\d+_")
OP_TABLES = {"memcpy": "CUPTI_ACTIVITY_KIND_MEMCPY", "kernel": "CUPTI_ACTIVITY_KIND_KERNEL",
             "memset": "CUPTI_ACTIVITY_KIND_MEMSET"}


def copy_export(source: str | Path, folder: str | Path, *, name: str | None = None,
                sidecar: dict[str, Any] | None = None) -> Path:
    """Copy an SQLite export into ``folder`` (as ``name``.sqlite, default the source's name) through SQLite's
    backup API, with a ``<name>.meta.json`` sidecar holding ``sidecar`` when given. Returns the new path."""
    source = Path(source)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name or report_stem(source)}.sqlite"
    if target.resolve() == source.resolve():
        raise ValueError(f"{target}: refusing to overwrite the source export")
    target.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    if sidecar is not None:
        sidecar_path(target).write_text(json.dumps(sidecar, indent=1) + "\n")
    return target


def stretch_copies(source: str | Path, folder: str | Path, *, factor: float, kernel_factor: float = 1.0,
                   numa: int | None = 1, name: str | None = None,
                   sidecar: dict[str, Any] | None = None) -> Path:
    """A SYNTHETIC copy of ``source`` whose memcpy durations are multiplied by ``factor`` and kernel durations
    by ``kernel_factor`` (each op's start kept, its end moved: end = start + round(duration x factor), halves
    rounded up).

    Named like the source with its NUMA node replaced by ``numa`` (``pipeline_gpu0_numa1_vit0x0x0``) unless
    ``name`` is given; ``sidecar`` (default ``{"gpu_numa_node": 0}``: the GPU is local to node 0, so this
    run plays the remote node) is written as the report's metadata sidecar.
    """
    if factor <= 0 or kernel_factor <= 0:
        raise ValueError("stretch factors must be positive")
    source = Path(source)
    stem = report_stem(source)
    if name is None:
        if numa is None or not _NUMA_IN_NAME.search(stem):
            name = f"{stem}_stretched"
        else:
            name = _NUMA_IN_NAME.sub(f"_numa{numa}_", stem, count=1)
    target = copy_export(source, folder, name=name, sidecar={"gpu_numa_node": 0} if sidecar is None else sidecar)
    con = sqlite3.connect(target)
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for kind, scale in (("memcpy", factor), ("kernel", kernel_factor)):
            if scale != 1.0 and OP_TABLES[kind] in tables:
                con.execute(f'UPDATE {OP_TABLES[kind]} SET "end" = start + CAST(ROUND(("end" - start) * ?) AS INTEGER)',
                            (scale,))
        con.commit()
    finally:
        con.close()
    target.with_name(f"{name}.SYNTHETIC.txt").write_text(
        f"SYNTHETIC export made by nsysan.testing.synthetic.stretch_copies from {source.name}: memcpy durations "
        f"x {factor}, kernel durations x {kernel_factor}, op starts and everything else unchanged. Not a real "
        "capture; for testing only.\n")
    return target
