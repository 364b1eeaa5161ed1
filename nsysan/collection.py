"""Many reports at once: finding exports under paths, opening them, and keeping each one's metadata.

Opening is lazy and failures are collected rather than raised, so a batch analysis goes on past a bad
file and reports it at the end.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from nsysan.errors import NsysanError
from nsysan.load import Report
from nsysan.metadata import read_metadata, report_stem

T = TypeVar("T")


def _is_parquet_export(folder: Path) -> bool:
    return (folder / "NVTX_EVENTS.parquet").exists() or (folder / "StringIds.parquet").exists()


def find_exports(paths: Iterable[str | Path]) -> list[Path]:
    """Export files and parquetdir folders named by ``paths``, searching folders recursively.

    A path named explicitly is kept even if it does not look like an export, so that opening it reports
    what is wrong with it. Where a folder holds both the SQLite and the parquetdir export of one report
    (``nsysan export --type both``), only the SQLite one is kept, so no report is counted twice.
    Results are free of duplicates.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not _is_parquet_export(path):
            for candidate in sorted(path.rglob("*")):
                if candidate.is_file() and candidate.suffix == ".sqlite":
                    found[candidate] = None
                elif candidate.is_dir() and _is_parquet_export(candidate):
                    found[candidate] = None
        else:
            found[path] = None
    sqlite_reports = {(p.parent, report_stem(p)) for p in found if p.suffix == ".sqlite"}
    return [p for p in found if p.suffix == ".sqlite" or (p.parent, report_stem(p)) not in sqlite_reports]


@dataclass
class Failure:
    path: Path
    reason: str


@dataclass
class Collection:
    """Exports to analyse together, each with run metadata (model, gpu, numa, variant, sidecar fields)."""

    paths: list[Path]
    failures: list[Failure] = field(default_factory=list)
    #: Columns :meth:`concat` tags rows with: ``report`` and every metadata key seen.
    tag_keys: list[str] = field(default_factory=lambda: ["report"])

    @property
    def report_names(self) -> dict[Path, str]:
        """How each report is named in outputs: its file name, or, where file names clash, its path
        relative to the folder the clashing reports share (``gpu0/run``, ``gpu1/run``)."""
        names = {path: Report.display_name(path) for path in self.paths}
        counts = Counter(names.values())
        clashing = [p for p in self.paths if counts[names[p]] > 1]
        if clashing:
            root = Path(os.path.commonpath([p.resolve().parent for p in clashing]))
            for path in clashing:
                names[path] = str(path.resolve().relative_to(root)).removesuffix(".sqlite")
        return names

    def check_keys(self, keys: Iterable[str]) -> None:
        """Fail with one line when a grouping key is neither ``report`` nor a metadata key seen by
        :meth:`concat`."""
        missing = [k for k in keys if k not in self.tag_keys]
        if missing:
            raise NsysanError(f"unknown grouping key(s) {', '.join(missing)}; keys here: {', '.join(self.tag_keys)}")

    def metadata(self, path: Path) -> dict[str, Any]:
        return read_metadata(path)

    def map(self, analysis: Callable[[Report], T],
            progress: Callable[[Path], None] | None = None) -> Iterator[tuple[Path, dict[str, Any], T]]:
        """Open each report in turn and apply ``analysis``; failures are recorded in :attr:`failures`."""
        for path in self.paths:
            try:
                meta = self.metadata(path)
                with Report(path) as report:
                    result = analysis(report)
            except NsysanError as e:
                self.failures.append(Failure(path, str(e)))
            else:
                yield path, meta, result
            finally:
                if progress:
                    progress(path)

    def concat(self, analysis: Callable[[Report], pl.DataFrame],
               progress: Callable[[Path], None] | None = None) -> pl.DataFrame:
        """Apply a frame-returning analysis to every report and stack the results, each row tagged with
        ``report`` and the report's metadata columns."""
        frames = []
        names = self.report_names
        for path, meta, frame in self.map(analysis, progress):
            tags = {"report": names[path], **meta}
            self.tag_keys.extend(k for k in tags if k not in self.tag_keys)
            frames.append(frame.with_columns(
                [pl.lit(value, dtype=_literal_type(value)).alias(key) for key, value in tags.items()]))
        if not frames:
            return pl.DataFrame()
        return pl.concat(frames, how="diagonal_relaxed")


def _literal_type(value: Any) -> pl.DataType:
    if isinstance(value, bool):
        return pl.Boolean()
    if isinstance(value, int):
        return pl.Int64()
    if isinstance(value, float):
        return pl.Float64()
    return pl.String()


def collect(paths: Iterable[str | Path]) -> Collection:
    """A :class:`Collection` of every export found under ``paths`` (files or folders)."""
    return Collection(find_exports(paths))
