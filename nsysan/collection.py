"""Many reports at once: finding exports under paths, naming them, and reading each one's run metadata.

A :class:`Collection` is immutable: analysing it never changes it, and what went wrong travels in each
result (:class:`nsysan.engine.Result`). Metadata (report names and sidecars) is read before any report is
opened, so that a grouping key no report has is refused at once.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from nsysan.errors import NsysanError
from nsysan.files import resolved
from nsysan.metadata import read_metadata, report_stem


def _is_parquet_export(folder: Path) -> bool:
    return (folder / "NVTX_EVENTS.parquet").exists() or (folder / "StringIds.parquet").exists()


def find_exports(paths: Iterable[str | Path]) -> list[Path]:
    """Export files and parquetdir folders named by ``paths``, searching folders recursively.

    A path named explicitly is kept even if it does not look like an export, so that opening it reports
    what is wrong with it; so is a folder in which nothing is found (opening it says so), and so is
    anything named ``*.sqlite`` found in a folder that is not a folder itself (a FIFO, a broken link: opening
    it refuses it, in one line, instead of leaving it out without a word). Where a folder holds both the
    SQLite and the parquetdir export of one report (``nsysan export --type both``), only the SQLite one is
    kept, so no report is counted twice. Results are free of duplicates.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not _is_parquet_export(path):
            inside = [c for c in sorted(path.rglob("*"))
                      if (c.suffix == ".sqlite" and not c.is_dir()) or (c.is_dir() and _is_parquet_export(c))]
            found.update(dict.fromkeys(inside or [path]))
        else:
            found[path] = None
    sqlite_reports = {(p.parent, report_stem(p)) for p in found if p.suffix == ".sqlite"}
    return [p for p in found if p.suffix == ".sqlite" or (p.parent, report_stem(p)) not in sqlite_reports]


@dataclass(frozen=True)
class Failure:
    """A report that could not be read or analysed, and why (one line that names the file)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Collection:
    """Exports to analyse together, each with run metadata (model, gpu, numa, variant, sidecar fields)."""

    paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(Path(p) for p in self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def names(self) -> dict[Path, str]:
        """How each report is named in outputs: its file name, or, where file names clash, its path
        relative to the folder the clashing reports share (``gpu0/run``, ``gpu1/run``)."""
        names = {path: report_stem(path) for path in self.paths}
        counts = Counter(names.values())
        clashing = [p for p in self.paths if counts[names[p]] > 1]
        if clashing:
            real = {path: resolved(path) for path in clashing}
            root = Path(os.path.commonpath([r.parent for r in real.values()]))
            for path in clashing:
                names[path] = str(real[path].relative_to(root)).removesuffix(".sqlite")
        return names

    @cached_property
    def metadata(self) -> dict[Path, dict[str, Any] | Failure]:
        """Each report's run metadata, or the :class:`Failure` of reading its sidecar."""
        out: dict[Path, dict[str, Any] | Failure] = {}
        for path in self.paths:
            try:
                out[path] = read_metadata(path)
            except NsysanError as e:
                out[path] = Failure(path, str(e))
        return out

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """``report`` and every metadata key of any report, in order of first appearance."""
        keys = {"report": None}
        for meta in self.metadata.values():
            if isinstance(meta, dict):
                keys.update(dict.fromkeys(meta))
        return tuple(keys)


def collect(paths: str | Path | Iterable[str | Path]) -> Collection:
    """A :class:`Collection` of every export found under ``paths`` (files or folders)."""
    chosen = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return Collection(tuple(find_exports(chosen)))
