"""Which NVTX range instances an analysis counts: one rule, one default, for every analysis and command.

    Selection()                    # the default: warm-up left out, numbered names pooled (batch_7 -> batch_*)
    Selection.everything()         # every instance, names as recorded: what nsys stats counts
    Selection(skip_first=2, batches="iter_*")

The rules, in order (docs/metrics.md, "Instance selection"):

1. **warm-up**: instances named like a pattern of ``exclude_within`` (default ``warmup_*``), and every instance
   nested inside one, are left out; so is the GPU work they launched (kernels, copies);
2. **skip first**: the first ``skip_first`` remaining instances of every range name (and style) of each
   process are left out, by start time;
3. **numbered names**: where instances are pooled into statistics, ``batch_12`` and ``batch_13`` count as one
   stage ``batch_*`` (``merge_numbered``); traces keep the names as recorded;
4. **batches**: the measured batches (throughput, the ``batches`` window, the steps of distributed runs) are
   the outermost instances named like a pattern of ``batches`` (default ``batch_*`` and ``step_*``) that rules 1
   and 2 kept.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from nsysan.defaults import BATCH_PATTERNS, WARMUP_PATTERN
from nsysan.errors import NsysanError

_NUMBERED = re.compile(r"([_\-.:]?)\d+$")


@dataclass(frozen=True)
class Selection:
    """The instance-selection rules of the module doc; immutable and hashable, so results can be cached by it."""

    exclude_within: tuple[str, ...] = (WARMUP_PATTERN,)
    skip_first: int = 0
    merge_numbered: bool = True
    batches: tuple[str, ...] = BATCH_PATTERNS

    def __post_init__(self) -> None:
        patterns = self.exclude_within
        if patterns is None:
            patterns = ()
        elif isinstance(patterns, str):
            patterns = (patterns,) if patterns else ()
        object.__setattr__(self, "exclude_within", tuple(p for p in patterns if p))
        if not all(isinstance(p, str) for p in self.exclude_within):
            raise NsysanError(f"exclude_within takes glob patterns (strings), not {self.exclude_within!r}")
        if isinstance(self.skip_first, bool) or not isinstance(self.skip_first, int) or self.skip_first < 0:
            raise NsysanError(f"skip_first must be a whole number >= 0, not {self.skip_first!r}")
        batches = (self.batches,) if isinstance(self.batches, str) else tuple(self.batches or ())
        object.__setattr__(self, "batches", tuple(p for p in batches if p))
        if not self.batches or not all(isinstance(p, str) for p in self.batches):
            raise NsysanError(f"batches must be glob patterns such as 'batch_*', not {batches!r}")

    @classmethod
    def everything(cls, *, batches: str | tuple[str, ...] = BATCH_PATTERNS) -> Selection:
        """Every instance with its recorded name, as ``nsys stats`` counts them."""
        return cls(exclude_within=(), skip_first=0, merge_numbered=False, batches=batches)

    def describe(self) -> str:
        """The rules in words, for figure titles and report headers."""
        parts = [f"excluding {', '.join(self.exclude_within)}" if self.exclude_within else "all instances"]
        if self.skip_first:
            parts.append(f"first {self.skip_first} of each range skipped")
        if self.merge_numbered:
            parts.append("numbered ranges pooled")
        return "; ".join(parts)


DEFAULT = Selection()


# -- the rules, on a range trace (nsysan.analyses.latency.range_trace, one report or several) ----------------------
def select_instances(trace: pl.DataFrame, selection: Selection = DEFAULT) -> pl.DataFrame:
    """The instances of ``trace`` that rules 1 and 2 keep (names unchanged)."""
    out = trace
    if selection.exclude_within:
        warm = warmup_ranges(trace, selection.exclude_within)
        out = out.join(warm, on=[*_report_key(trace), "range_id"], how="anti")
    if selection.skip_first:
        keys = [*_report_key(out), *(["pid"] if "pid" in out.columns else []), "range", "style"]
        out = (out.sort("start_ns", "range_id")
               .filter(pl.int_range(pl.len()).over(keys) >= selection.skip_first))
    return out


def warmup_ranges(trace: pl.DataFrame, patterns: Sequence[str]) -> pl.DataFrame:
    """``range_id`` (and ``report``) of the instances rule 1 leaves out: named like one of ``patterns`` or
    nested inside such an instance."""
    flags = nested_in_named(trace, names_matching(trace["range"], patterns), include_self=True)
    return flags.filter(pl.col("nested")).drop("nested")


def measured_batches(trace: pl.DataFrame, selection: Selection = DEFAULT) -> pl.DataFrame:
    """Rule 4: the outermost instances named like a pattern of ``selection.batches`` among those rules 1 and 2
    keep, sorted by start."""
    names = names_matching(trace["range"], selection.batches)
    keys = _report_key(trace)
    outer = nested_in_named(trace, names, include_self=False).filter(~pl.col("nested"))
    kept = select_instances(trace, selection)
    return (kept.filter(pl.col("range").is_in(names))
            .join(outer, on=[*keys, "range_id"], how="semi")
            .sort(*keys, "start_ns", "range_id"))


def pooled_name(name: pl.Expr) -> pl.Expr:
    """Rule 3 on a column of range names: ``batch_12`` -> ``batch_*``."""
    return name.str.replace(_NUMBERED.pattern, "${1}*")


def pool_names(trace: pl.DataFrame, selection: Selection = DEFAULT, *columns: str) -> pl.DataFrame:
    """Rule 3 applied to the name columns of a frame (default ``range`` and ``parent`` where present) when
    ``selection.merge_numbered``; the frame unchanged otherwise."""
    if not selection.merge_numbered:
        return trace
    chosen = columns or tuple(c for c in ("range", "parent") if c in trace.columns)
    return trace.with_columns(pooled_name(pl.col(c)) for c in chosen)


# -- building blocks ------------------------------------------------------------------------------------------
def names_matching(names: pl.Series, patterns: Sequence[str]) -> list[str]:
    """The distinct names that match any of the glob ``patterns``."""
    return [n for n in names.unique().drop_nulls().to_list() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def nested_in_named(trace: pl.DataFrame, names: Sequence[str], *, include_self: bool) -> pl.DataFrame:
    """For every instance: ``nested`` is True when an enclosing instance (or, with ``include_self``, the
    instance itself) has one of ``names``. Columns: ``report`` (when the trace has it), ``range_id``,
    ``nested``. Walks up the parent chain, one join per nesting level."""
    keys = _report_key(trace)
    walk = trace.select(*keys, "range_id", up="parent_id",
                        nested=pl.col("range").is_in(names) if include_self else pl.lit(False))
    if not names:
        return walk.drop("up")
    lookup = trace.select(*keys, up="range_id", _up_range="range", _up_parent="parent_id")
    while walk["up"].is_not_null().any():
        walk = (walk.join(lookup, on=[*keys, "up"], how="left")
                .with_columns(nested=pl.col("nested") | pl.col("_up_range").is_in(names).fill_null(False),
                              up=pl.col("_up_parent"))
                .drop("_up_range", "_up_parent"))
    return walk.drop("up")


def _report_key(trace: pl.DataFrame) -> list[str]:
    return ["report"] if "report" in trace.columns else []
