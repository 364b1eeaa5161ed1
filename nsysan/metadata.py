"""Run metadata of a report: parsed from its file name, overridden by a sidecar ``<report>.meta.json``.

File names follow the experiment runner's convention ``pipeline_gpu{G}_numa{N}_vit{P}x{D}x{H}[_{variant}]``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nsysan.errors import NsysanError

NAME_PATTERN = re.compile(
    r"^(?P<prefix>[A-Za-z]+)_gpu(?P<gpu>\d+)_numa(?P<numa>\d+)_(?P<model>vit\d+x\d+x\d+)(?:_(?P<variant>.+))?$")
EXPORT_SUFFIXES = (".sqlite", "_pqtdir", ".nsys-rep", ".qdrep", ".meta.json")
KEYS = ("model", "gpu", "numa", "variant")
#: Sidecar fields that are outcomes measured by the run, not part of its configuration: runs that differ
#: only in these are the same experiment (NUMA pairing and comparisons must not split on them).
MEASURED_KEYS = ("samples_per_s",)


def report_stem(path: Path) -> str:
    """The report's name without export suffixes: ``a/b/run.sqlite`` -> ``run``; also how reports are named in
    outputs."""
    name = path.name
    for suffix in EXPORT_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def sidecar_path(path: Path) -> Path:
    return path.with_name(report_stem(path) + ".meta.json")


def parse_name(stem: str) -> dict[str, Any]:
    """Metadata encoded in a report name; every key of :data:`KEYS` is present (None when unknown)."""
    found = NAME_PATTERN.match(stem)
    if not found:
        return dict.fromkeys(KEYS)
    return {"model": found["model"], "gpu": int(found["gpu"]), "numa": int(found["numa"]),
            "variant": found["variant"]}


def read_metadata(path: Path) -> dict[str, Any]:
    """Name-derived metadata, updated by the top-level scalar fields of the sidecar when there is one."""
    meta = parse_name(report_stem(path))
    sidecar = sidecar_path(path)
    if sidecar.exists():
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError) as e:
            raise NsysanError(f"{sidecar}: unreadable metadata sidecar ({e})") from None
        if not isinstance(data, dict):
            raise NsysanError(f"{sidecar}: metadata sidecar must hold a JSON object")
        # A null in the sidecar means "not recorded", so it never erases what the report name says.
        meta.update({k: v for k, v in data.items()
                     if isinstance(v, (str, int, float, bool)) or (v is None and k not in meta)})
    return meta
