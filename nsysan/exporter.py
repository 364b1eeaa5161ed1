"""Turn nsys reports (``.nsys-rep``, legacy ``.qdrep``) into the exports nsysan reads, many at a time.

    result = nsysan.export(["runs/"], types="both", jobs=4)
    print(result.counts, [(item.report, item.reason) for item in result.failed])

Each report is converted with ``nsys export --type sqlite`` (``<name>.sqlite``) and/or ``--type parquetdir``
(``<name>_pqtdir/``, nsys's own default name), beside the report or mirrored under ``out_dir``.

* **Incremental**: an export that exists, is complete (:func:`nsysan.export_check.export_problem`) and is not older than its
  report is left alone (status ``up-to-date``) unless ``force``.
* **Atomic**: nsys writes to ``<output>.nsysan-<pid>-<random>.tmp`` in the output's folder; the file is checked
  and then renamed into place. On failure, timeout, Ctrl-C or SIGTERM the temporary is removed and nsys (run in
  its own process group) is killed. A run that is SIGKILLed cannot clean up: the next run removes temporaries
  whose process is gone.
* **Failures** are per report, with a one-line reason; the other reports still convert.
* **Where**: on ``jobs`` local threads, each running one nsys, or with ``scheduler`` one task per report on a
  Dask distributed cluster (:mod:`nsysan.export_batch`), for batches larger than one machine's cores can
  convert in good time; the results are the same either way.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsysan import nsys_tool, parallel
from nsysan.errors import NsysanError
# Re-exported: the public names of the exporter, wherever they are defined.
from nsysan.export_batch import (  # noqa: F401
    CONVERTED, FAILED, NSYS_TYPE, PLANNED, STATUSES, STOP_WAIT_S, UP_TO_DATE, ExportItem, Job, Options, convert_all,
    stale_temporaries)
from nsysan.export_check import export_problem  # noqa: F401
from nsysan.files import resolved
from nsysan.host import default_jobs, terminations_interrupt
from nsysan.metadata import report_stem
from nsysan.nsys_tool import Nsys, NsysNotFoundError

REPORT_SUFFIXES = (".nsys-rep", ".qdrep")
TYPE_CHOICES = ("sqlite", "parquet", "both")
PARQUET_SUFFIX = "_pqtdir"


# -- names ------------------------------------------------------------------------------------------------------

def _stem(report: Path) -> str:
    """``run.nsys-rep`` -> ``run``; a report named otherwise loses its last suffix."""
    stem = report_stem(report)
    return stem if stem != report.name else (report.stem or report.name)


def output_path(report: Path, kind: str, *, root: Path | None = None, out_dir: Path | None = None) -> Path:
    """Where the ``kind`` ("sqlite" or "parquet") export of ``report`` goes: beside it, or under ``out_dir``
    at the same place relative to ``root`` (the folder the report was found under) as the report."""
    name = _stem(report) + (".sqlite" if kind == "sqlite" else PARQUET_SUFFIX)
    if out_dir is None:
        return report.parent / name
    relative = report.parent.relative_to(root) if root is not None else Path()
    return out_dir / relative / name


@dataclass
class ExportResult:
    """The outcome of :func:`export`: one :class:`ExportItem` per report (sorted by path), and the nsys used."""

    items: list[ExportItem]
    nsys: Nsys | None
    kinds: tuple[str, ...]
    dry_run: bool = False
    seconds: float = 0.0
    #: Batch-level remarks (e.g. "nsys 2022.4 has no parquetdir export: SQLite only").
    notes: list[str] = field(default_factory=list)
    #: Temporaries of earlier, killed runs that were removed (or, in a dry run, would be).
    stale_removed: list[Path] = field(default_factory=list)

    def _with(self, status: str) -> list[ExportItem]:
        return [item for item in self.items if item.status == status]

    @property
    def converted(self) -> list[ExportItem]:
        return self._with(CONVERTED)

    @property
    def up_to_date(self) -> list[ExportItem]:
        return self._with(UP_TO_DATE)

    @property
    def planned(self) -> list[ExportItem]:
        return self._with(PLANNED)

    @property
    def failed(self) -> list[ExportItem]:
        return self._with(FAILED)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def counts(self) -> dict[str, int]:
        return {"total": len(self.items), **{s.replace("-", "_"): len(self._with(s)) for s in STATUSES}}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``nsysan export --summary FILE`` writes)."""
        return {
            "nsys": None if self.nsys is None else {"path": str(self.nsys.path), "version": str(self.nsys.version),
                                                    "source": self.nsys.source},
            "types": list(self.kinds), "dry_run": self.dry_run, "seconds": round(self.seconds, 3),
            "counts": self.counts, "notes": self.notes, "stale_removed": [str(p) for p in self.stale_removed],
            "items": [item.to_dict() for item in self.items],
        }

    def to_frame(self):  # -> polars.DataFrame (imported lazily: the exporter itself needs no polars)
        """One row per report: report, status, outputs, converted, reason, report_nsys_version, seconds."""
        import polars as pl

        rows = [{"report": str(i.report), "status": i.status,
                 "outputs": ", ".join(str(p) for p in i.outputs.values()),
                 "converted": ",".join(i.converted) or None, "reason": i.reason,
                 "report_nsys_version": i.report_version, "seconds": round(i.seconds, 3)} for i in self.items]
        schema = {"report": pl.String, "status": pl.String, "outputs": pl.String, "converted": pl.String,
                  "reason": pl.String, "report_nsys_version": pl.String, "seconds": pl.Float64}
        return pl.DataFrame(rows, schema=schema)


# -- finding reports ---------------------------------------------------------------------------------------------

def find_reports(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, Path | None]], list[ExportItem]]:
    """``(report, root)`` pairs for every report named by ``paths`` (folders searched recursively for
    ``*.nsys-rep`` and ``*.qdrep``; ``root`` is the folder, None for a file named directly), and a failed item for
    every path that does not exist. A file named directly is kept whatever its name, so that it gets a reason."""
    found: dict[Path, tuple[Path, Path | None]] = {}
    missing: list[ExportItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                # Anything named like a report but a folder is kept (a FIFO, a device, a broken link), so that it
                # is refused in one line instead of left out without a word.
                if candidate.suffix in REPORT_SUFFIXES and not candidate.is_dir():
                    found.setdefault(_identity(candidate), (candidate, path))
        elif path.exists() or path.is_symlink():
            found.setdefault(_identity(path), (path, None))
        else:
            missing.append(ExportItem(path, reason="no such file or folder").finish())
    return list(found.values()), missing


def _identity(path: Path) -> Path:
    return resolved(path)  # a link loop or broken link stays as it is (Path.resolve raises on a loop)


# -- the batch ---------------------------------------------------------------------------------------------------

def resolve_kinds(types: str, tool: Nsys | None) -> tuple[tuple[str, ...], list[str]]:
    """The export kinds to write for ``types`` (sqlite | parquet | both) with this nsys, and notes."""
    if types not in TYPE_CHOICES:
        raise NsysanError(f"--type must be one of {', '.join(TYPE_CHOICES)}, not {types!r}")
    kinds = ("sqlite", "parquet") if types == "both" else (types,)
    if "parquet" in kinds and tool is not None and not tool.supports_parquetdir:
        if types == "parquet":
            raise NsysanError(f"nsys {tool.version} ({tool.path}) cannot export parquetdir (nsys 2023.1 and newer "
                              "can): use --type sqlite, or a newer nsys with --nsys PATH")
        return ("sqlite",), [f"nsys {tool.version} has no parquetdir export: wrote SQLite only"]
    return kinds, []


def export(paths: str | Path | Iterable[str | Path], *, types: str = "sqlite", out_dir: str | Path | None = None,
           jobs: int | None = None, force: bool = False, dry_run: bool = False, timeout: float | None = None,
           nsys: str | Path | Nsys | None = None, scheduler: str | None = None,
           progress: Callable[[ExportItem, int, int], None] | None = None) -> ExportResult:
    """Convert every report under ``paths`` with ``nsys export``; see the module doc for the rules.

    ``types``: "sqlite" (default), "parquet" (parquetdir) or "both" (parquetdir where the nsys supports it).
    ``jobs``: parallel conversions (default: the number of cores). ``timeout``: seconds per nsys run.
    ``nsys``: the nsys binary (or an install folder); default: :func:`nsysan.nsys_tool.find_nsys`.
    ``scheduler``: a Dask distributed scheduler (``tcp://host:8786``; ``pip install 'nsysan[dask]'``) whose
    workers convert one report per task (``jobs`` is then theirs to decide). They must see the reports, the
    outputs' folders and the nsys binary at the same paths as here (a shared file system) and import the same
    nsysan. Default: :func:`nsysan.parallel.configure`'s, else ``$NSYSAN_SCHEDULER``; ``"none"`` converts here.
    ``progress(item, done, total)`` is called in the calling thread after each report, wherever it ran.

    Raises :class:`NsysanError` for problems with the request itself (no reports found, no nsys, bad option, an
    unreachable scheduler); problems with single reports are in the result's ``failed`` items. KeyboardInterrupt
    (Ctrl-C, and SIGTERM or SIGHUP while running in the main thread) stops nsys, removes temporaries and is
    re-raised; on Dask it cancels the reports not started (those running finish, or leave no partial export)."""
    started = time.monotonic()
    _check_options(types, jobs, timeout)
    reports, failed = _requested_reports(paths)
    tool, notes = _find_tool(nsys, dry_run)
    kinds, kind_notes = resolve_kinds(types, tool)
    planned, clashes = plan_outputs(reports, kinds, Path(out_dir) if out_dir is not None else None)
    options = Options(tool, kinds, force=force, dry_run=dry_run, timeout=timeout)
    stale: set[Path] = set()
    items = _run_batch(options, planned, [*failed, *clashes], workers=jobs or default_jobs(),
                       scheduler=_scheduler(scheduler), progress=progress, stale=stale)
    items.sort(key=lambda i: str(i.report))
    return ExportResult(items, tool, kinds, dry_run, time.monotonic() - started, notes + kind_notes, sorted(stale))


def _check_options(types: str, jobs: int | None, timeout: float | None) -> None:
    if jobs is not None and jobs < 1:
        raise NsysanError(f"--jobs must be at least 1, not {jobs}")
    if timeout is not None and timeout <= 0:
        raise NsysanError(f"--timeout must be positive, not {timeout:g}")
    if types not in TYPE_CHOICES:
        raise NsysanError(f"--type must be one of {', '.join(TYPE_CHOICES)}, not {types!r}")


def _requested_reports(paths: str | Path | Iterable[str | Path]) -> tuple[list[tuple[Path, Path | None]],
                                                                        list[ExportItem]]:
    chosen = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not chosen:
        raise NsysanError("no input: give .nsys-rep / .qdrep files or folders to search")
    reports, failed = find_reports(chosen)
    if not reports and all(p.is_dir() for p in chosen):
        raise NsysanError(f"no .nsys-rep or .qdrep reports found under {', '.join(map(str, chosen))}")
    return reports, failed


def _find_tool(nsys: str | Path | Nsys | None, dry_run: bool) -> tuple[Nsys | None, list[str]]:
    """The nsys to export with; a dry run needs none, and says so."""
    try:
        return (nsys if isinstance(nsys, Nsys) else nsys_tool.find_nsys(nsys)), []
    except NsysNotFoundError as e:
        if not dry_run:
            raise
        return None, [f"{e} (dry run: nothing was exported)"]


def _scheduler(scheduler: str | None) -> str | None:
    if scheduler is None:
        return parallel.configured_scheduler()
    return None if scheduler.strip().lower() in ("", "none", "local") else scheduler


def plan_outputs(reports: list[tuple[Path, Path | None]], kinds: tuple[str, ...],
                 out_dir: Path | None) -> tuple[list[Job], list[ExportItem]]:
    """Each report with where its exports go, and a failed item for every report that would write an export
    another report of the batch writes (``x.nsys-rep`` and ``x.qdrep``; one relative path under two folders)."""
    planned: list[Job] = []
    clashes: list[ExportItem] = []
    claimed: dict[Path, Path] = {}
    for report, root in reports:
        outputs = {k: output_path(report, k, root=root, out_dir=out_dir) for k in kinds}
        clash = next((claimed[_identity(o)] for o in outputs.values() if _identity(o) in claimed), None)
        if clash is not None:
            clashes.append(ExportItem(report, outputs, reason=f"same output as {clash}: rename one of them or "
                                      "export them into different --out-dir folders").finish())
            continue
        claimed.update({_identity(o): report for o in outputs.values()})
        planned.append((report, outputs))
    return planned, clashes


def _run_batch(options: Options, planned: list[Job], failed: list[ExportItem], *, workers: int,
               scheduler: str | None, progress: Callable[[ExportItem, int, int], None] | None,
               stale: set[Path]) -> list[ExportItem]:
    """Every item: the failed ones first, then the converted ones as they finish, each told to ``progress``."""
    items: list[ExportItem] = []
    total = len(failed) + len(planned)

    def record(item: ExportItem) -> None:
        items.append(item)
        if progress:
            progress(item, len(items), total)

    for item in failed:
        record(item)
    # closing(): an interrupt that arrives in ``progress`` still stops the batch's nsys runs at once.
    with terminations_interrupt(), closing(convert_all(options, planned, workers=workers, scheduler=scheduler,
                                                       stale=stale)) as finished:
        for item in finished:
            record(item)
    return items
