"""Run metadata of a report: parsed from its file name, overridden by a sidecar ``<report>.meta.json``.

File names follow the experiment runner's convention ``pipeline_gpu{G}_numa{N}_vit{P}x{D}x{H}[_{variant}]``.
Sidecar fields are type-checked (:data:`FIELDS`); a wrong one fails that report with one line.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nsysan import files
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
    """Name-derived metadata, updated by the top-level scalar fields of the sidecar when there is one.

    The sidecar must be a regular file holding a JSON object; the fields nsysan interprets are type-checked
    (:data:`FIELDS`: a batch size is a positive integer, a NUMA node a whole number >= 0, ...), and every
    number must fit the columns it becomes (64-bit integers, finite floats). Anything else raises
    :class:`NsysanError` with one line naming the sidecar and the field. Nested objects are the runner's
    records, not metadata keys: they are left out."""
    meta = parse_name(report_stem(path))
    sidecar = sidecar_path(path)
    if not os.path.lexists(sidecar):
        return meta
    try:
        size = files.check_regular(sidecar).st_size
        if size > MAX_SIDECAR_BYTES:
            raise files.UnreadableFile(f"too large for a metadata sidecar ({size} bytes)")
        data = json.loads(files.read_head(sidecar, MAX_SIDECAR_BYTES + 1).decode("utf-8"))
    except files.UnreadableFile as e:
        raise NsysanError(f"{sidecar}: unreadable metadata sidecar ({e})") from None
    except (ValueError, RecursionError) as e:  # invalid UTF-8 or JSON, or nested beyond reason
        raise NsysanError(f"{sidecar}: unreadable metadata sidecar ({files.brief(e)})") from None
    if not isinstance(data, dict):
        raise NsysanError(f"{sidecar}: metadata sidecar must hold a JSON object, not {_json_kind(data)}")
    for key, value in data.items():
        problem = _field_problem(key, value)
        if problem:
            shown = json.dumps(value)
            raise NsysanError(f"{sidecar}: {key} {problem}, not {shown if len(shown) <= 60 else shown[:57] + '...'}")
    # A null in the sidecar means "not recorded", so it never erases what the report name says.
    meta.update({k: v for k, v in data.items()
                 if isinstance(v, (str, int, float, bool)) or (v is None and k not in meta)})
    return meta


#: Sidecar fields nsysan interprets, and what each must be (None is always allowed: "not recorded").
FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model": ("must be a non-empty string", lambda v: isinstance(v, str) and v != ""),
    "variant": ("must be a string", lambda v: isinstance(v, str)),
    "gpu": ("must be a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "numa": ("must be a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "gpu_numa_node": ("must be a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "batch_size": ("must be a positive integer", lambda v: _is_int(v) and v > 0),
    "batch": ("must be a positive integer", lambda v: _is_int(v) and v > 0),
    "samples_per_s": ("must be a positive number", lambda v: _is_number(v) and v > 0),
}
MAX_SIDECAR_BYTES = 16 << 20
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _json_kind(value: Any) -> str:
    return ("null" if value is None else "true/false" if isinstance(value, bool) else "a number"
            if isinstance(value, (int, float)) else "a string" if isinstance(value, str) else "an array")


def _field_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the sidecar field ``key``, or None."""
    if value is None or isinstance(value, (dict, list)):
        return None  # not recorded / the runner's nested records
    if key in FIELDS:
        need, ok = FIELDS[key]
        return None if ok(value) else need
    if isinstance(value, int) and not isinstance(value, bool) and not _is_int(value):
        return "must fit a 64-bit integer"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None
