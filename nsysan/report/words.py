"""How the report's sentences say numbers, groups and lists (``78 %``, ``18–35 %``, ``vit32x6x512 · pageable``,
``a, b and c``), and the model-size order in which they name groups; shared by :mod:`~nsysan.report.findings` and
:mod:`~nsysan.report.findings_compare`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import polars as pl

_MODEL = re.compile(r"^vit(\d+)x(\d+)x(\d+)$")
DIRECTION_WORDS = {"Host-to-Device": "H2D", "Device-to-Host": "D2H", "Device-to-Device": "D2D",
                   "Peer-to-Peer": "P2P", "Host-to-Host": "H2H"}


def num(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, thousands separated (no exponent)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{value:,.{decimals}f}"


def pct(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:+.0f}" if signed and abs(value) >= 10 else f"{value:+.1f}" if signed else (
        f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}")
    return text.replace("-", "−") + " %"


def pct_range(lo: float, hi: float) -> str:
    """``18–35 %``, or one value when the two round alike."""
    a, b = pct(lo), pct(hi)
    return a if a == b else f"{a.removesuffix(' %')}–{b}"


def times(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×"


def group_name(row: dict[str, Any], keys: Sequence[str]) -> str:
    """How a group is named in a sentence: text values as they are, numbers as ``key=value``, nulls left out
    (``vit32x6x512 · pageable``); ``report`` as the report's name."""
    parts = []
    for key in keys:
        value = row.get(key)
        if value is None or value == "":
            continue
        words = {"device_id": "GPU", "rank": "rank", "pid": "pid"}.get(key, key)
        parts.append(str(value) if isinstance(value, str) else f"{words} {value}")
    return " · ".join(parts) or "all runs"


def listing(names: Sequence[str], limit: int = 4) -> str:
    names = list(dict.fromkeys(names))
    if len(names) <= limit:
        return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def model_size(model: Any) -> float | None:
    """A compute-size proxy of a ``vit{patch}x{depth}x{dim}`` model: depth × dim² / patch² (ViT FLOPs per
    image at one resolution grow so); 0 for the no-op model; None for other names."""
    m = _MODEL.match(str(model or ""))
    if not m:
        return None
    patch, depth, dim = map(int, m.groups())
    return 0.0 if patch == 0 else depth * dim * dim / (patch * patch)


def order_groups(groups: pl.DataFrame, keys: Sequence[str]) -> tuple[pl.DataFrame, bool]:
    """``groups`` by model size (smallest first) when every group's model is a ViT name, else as given;
    the flag says whether the order is by size."""
    if "model" not in keys or groups.is_empty():
        return groups, False
    sizes = [model_size(m) for m in groups["model"].to_list()]
    if any(s is None for s in sizes):
        return groups, False
    return groups.with_columns(_size=pl.Series(sizes)).sort("_size", maintain_order=True).drop("_size"), True


def row_dicts(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return list(frame.iter_rows(named=True))


def matching(frame: pl.DataFrame, row: dict[str, Any], keys: Sequence[str]) -> pl.DataFrame:
    return frame.filter(*[pl.col(k).eq_missing(row.get(k)) for k in keys]) if keys else frame



__all__ = ["DIRECTION_WORDS", "group_name", "listing", "matching", "model_size", "num", "order_groups", "pct",
           "pct_range", "row_dicts", "times"]
