"""What was run: the experiment runner's records (``results.json``, ``experiment_summary.json``) of the studies
whose exports a report analyses.

``nsysan run`` leaves ``outputs/<experiment>/<date>/<time>/{nsys_reports/, logs/, results.json,
experiment_summary.json}`` (:mod:`nsysan.runner.study`). The records are found from the report's inputs: under
every input folder (searched recursively), and next to every export (its folder, or the study folder above an
``nsys_reports/`` folder). A record file may also be named ``<anything>.results.json`` (a record copied next to
its exports). Standard library only; nothing here reads an export.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS, SUMMARY = "results.json", "experiment_summary.json"
STATUS_ORDER = ("ok", "failed", "timeout", "interrupted", "skipped", "pending")


@dataclass(frozen=True)
class RunRecord:
    """One planned run of a study, as the runner recorded it."""

    name: str
    status: str
    reason: str | None = None
    model: str | None = None
    variant: str | None = None
    gpu: Any = None
    numa: Any = None
    seconds: float | None = None
    samples_per_s: float | None = None
    log: str | None = None


@dataclass(frozen=True)
class StudyRecord:
    """A study's record: where it was read from, the experiment, machine, nsys, and every run."""

    source: Path
    experiment: str | None
    created: str | None
    nsys_version: str | None
    machine: dict[str, Any]
    runs: tuple[RunRecord, ...]
    notes: tuple[str, ...] = ()
    remote_placement_tested: bool | None = None
    argv: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        """Runs per status, in :data:`STATUS_ORDER` (statuses with no run left out)."""
        found = Counter(r.status for r in self.runs)
        order = [*STATUS_ORDER, *sorted(set(found) - set(STATUS_ORDER))]
        return {s: found[s] for s in order if found[s]}

    @property
    def not_ok(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.runs if r.status != "ok")

    def gpu_names(self) -> list[str]:
        gpus = self.machine.get("gpus") or []
        return [f"GPU {g.get('index')}: {g.get('name')}" for g in gpus if isinstance(g, dict)]

    def numa_nodes(self) -> list[Any]:
        return list(self.machine.get("numa_nodes") or [])


@dataclass(frozen=True)
class Studies:
    """Every study record found for a report's inputs, and the problems met reading them."""

    records: tuple[StudyRecord, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.records)


def _candidates(inputs: Sequence[Path], exports: Iterable[Path]) -> list[Path]:
    """Folders that may hold a study record, in a stable order without duplicates."""
    folders: dict[Path, None] = {}
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            folders[path] = None
            for found in sorted(path.rglob("*results.json")):
                folders[found.parent] = None
    for export in exports:
        parent = Path(export).parent
        folders[parent] = None
        if parent.name == "nsys_reports":
            folders[parent.parent] = None
    return list(folders)


def _record_files(folder: Path) -> tuple[Path | None, Path | None]:
    results = folder / RESULTS
    if not results.is_file():
        named = sorted(folder.glob(f"*.{RESULTS}"))
        results = named[0] if named else None
    summary = folder / SUMMARY
    if not summary.is_file():
        named = sorted(folder.glob(f"*.{SUMMARY}"))
        summary = named[0] if named else None
    return results, summary


def _read(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _run(raw: dict[str, Any]) -> RunRecord:
    return RunRecord(name=str(raw.get("name")), status=str(raw.get("status") or "pending"), reason=raw.get("reason"),
                     model=raw.get("model"), variant=raw.get("variant"), gpu=raw.get("gpu"), numa=raw.get("numa"),
                     seconds=raw.get("seconds"), samples_per_s=raw.get("samples_per_s"), log=raw.get("log"))


def study_record(results: Path | None, summary: Path | None) -> StudyRecord:
    """One study from its ``results.json`` (every run) and/or ``experiment_summary.json`` (counts, notes)."""
    data = _read(results) if results else {}
    summ = _read(summary) if summary else {}
    runs = tuple(_run(r) for r in data.get("runs", []) if isinstance(r, dict))
    if not runs and summ:  # a summary alone: its failures and skipped runs, and the ok ones by name
        ok = [RunRecord(name=n, status="ok", samples_per_s=v) for n, v in (summ.get("samples_per_s") or {}).items()]
        bad = [RunRecord(name=f.get("name"), status=f.get("status", "failed"), reason=f.get("reason"),
                         log=f.get("log")) for f in summ.get("failures", [])]
        skipped = [RunRecord(name=s.get("name"), status="skipped", reason=s.get("reason")) for s in summ.get("skipped", [])]
        runs = (*ok, *bad, *skipped)
    nsys = data.get("nsys") or summ.get("nsys") or {}
    return StudyRecord(
        source=(results or summary).parent,  # type: ignore[union-attr]
        experiment=data.get("experiment") or summ.get("experiment"),
        created=data.get("created") or summ.get("created"),
        nsys_version=nsys.get("version") if isinstance(nsys, dict) else None,
        machine=data.get("machine") or summ.get("machine") or {},
        runs=runs,
        notes=tuple(summ.get("notes") or ()),
        remote_placement_tested=summ.get("remote_placement_tested"),
        argv=tuple(data.get("argv") or ()),
    )


def find_studies(inputs: Sequence[Path], exports: Iterable[Path] = ()) -> Studies:
    """The study records of ``inputs`` (the paths a report was given) and ``exports`` (the reports found)."""
    records, problems, seen = [], [], set()
    for folder in _candidates(inputs, exports):
        results, summary = _record_files(folder)
        if results is None and summary is None:
            continue
        key = (results or summary).resolve()  # type: ignore[union-attr]
        if key in seen:
            continue
        seen.add(key)
        try:
            records.append(study_record(results, summary))
        except (OSError, ValueError) as e:
            problems.append(f"{results or summary}: unreadable study record ({e})")
    return Studies(tuple(records), tuple(problems))
