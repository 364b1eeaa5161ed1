"""``nsysan export`` and ``nsysan doctor``: turn nsys reports into exports, and check the installation.

``export`` exits 0 when every report converted or was up to date, 3 when some failed and others did not, 1 when
every report failed or the request itself is wrong (no reports, no nsys), 2 for usage errors, 130 when
interrupted. ``doctor`` exits 1 when a check fails.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from nsysan.cli import views
from nsysan.cli.options import FormatOpt, Output, message, user_errors
from nsysan.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USER_ERROR, NsysanError
from nsysan.render import check_output, emit, infer_format, rows_table, terminal_width, write_atomic

if TYPE_CHECKING:
    from nsysan.exporter import ExportItem, ExportResult

app = typer.Typer()

NsysOpt = Annotated[Optional[str], typer.Option(
    "--nsys", help="The nsys to use (a binary or an install folder). Default: $NSYS, else the newest nsys on "
    "PATH, in the usual install folders and in nsysan's cache.", show_default=False)]
SchedulerOpt = Annotated[Optional[str], typer.Option(
    "--scheduler", envvar="NSYSAN_SCHEDULER", show_default=False,
    help="Convert each report as one task on this Dask distributed scheduler (tcp://host:8786; pip install "
    "'nsysan[dask]'), for batches larger than this machine. Its workers must see the reports, the output "
    "folders and the nsys at the same paths as here (a shared file system). --jobs is then unused.")]


@contextmanager
def _export_progress() -> Iterator[Callable[[ExportItem, int, int], None] | None]:
    """A progress bar on stderr (reports done / total, failures so far), only when stderr is a terminal.

    The total is only known once the reports are found, so the bar learns it from the callbacks."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("exporting reports"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reports", total=None, failed=0)
        failed = 0

        def advance(item: ExportItem, done: int, total: int) -> None:
            nonlocal failed
            failed += item.status == "failed"
            bar.update(task, completed=done, total=total, failed=failed)

        yield advance


@app.command()
def export(
    paths: Annotated[list[Path], typer.Argument(
        help=".nsys-rep / .qdrep reports, or folders to search recursively.", show_default=False)],
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j", help="Reports converted in parallel (default: the number of cores).", min=1)] = None,
    type_: Annotated[str, typer.Option(
        "--type", "-t", help="sqlite | parquet (nsys parquetdir) | both (parquetdir where the nsys supports it).")]
    = "sqlite",
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", help="Write exports here, mirroring the folders below each input folder "
        "(default: beside each report).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Export again even when an export is up to date.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only say what would be converted; write nothing.")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="Stop an nsys export that runs longer than this many seconds.", min=0.001)] = None,
    summary: Annotated[Optional[Path], typer.Option(
        "--summary", help="Also write a JSON summary of the batch to this file.")] = None,
    nsys: NsysOpt = None,
    scheduler: SchedulerOpt = None,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """Convert nsys reports into SQLite (and parquetdir) exports, skipping those already up to date.

    Exports go beside each report (run.nsys-rep -> run.sqlite, run_pqtdir/) or under --out-dir. An export is
    written under a temporary name and renamed when complete, so an interrupted run leaves nothing half-written.

    Example: nsysan export runs/ --jobs 4 --type both --summary export.json
    """
    with user_errors():
        chosen = infer_format(fmt, output)
        _check_targets(paths, output, summary)
        result = _convert(paths, types=type_, out_dir=out_dir, jobs=jobs, force=force, dry_run=dry_run,
                          timeout=timeout, nsys=nsys, scheduler=scheduler or "none")
        _tell_problems(result)
        # Outputs never replace a report or an export of this batch (nor anything under an input folder).
        inputs = [*(i.report for i in result.items), *(o for i in result.items for o in i.outputs.values())]
        _write_table(result, chosen, output, inputs)
        if summary is not None:
            write_atomic(summary, (json.dumps(result.to_dict(), indent=1) + "\n").encode(), inputs=inputs)
        _tally(result)


def _check_targets(paths: list[Path], output: Path | None, summary: Path | None) -> None:
    """Refuse, before anything is converted, a summary that is a folder or a file that would overwrite a report."""
    if summary is not None and summary.is_dir():
        raise NsysanError(f"--summary {summary}: is a directory; give a file name to write to")
    for target in (output, summary):
        if target is not None:
            check_output(target, [p for p in paths if not p.is_dir()])


def _convert(paths: list[Path], **options: Any) -> ExportResult:
    from nsysan.exporter import export as run_export  # as a name of its own: the command is called export

    try:
        with _export_progress() as progress:
            return run_export(paths, progress=progress, **options)
    except KeyboardInterrupt:
        if options["scheduler"].strip().lower() not in ("", "none", "local"):
            message("nsysan: interrupted: cancelled the reports not started on the cluster; those running there "
                    "finish or leave no partial export")
        else:
            message("nsysan: interrupted: stopped nsys and removed the partial exports")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _tell_problems(result: ExportResult) -> None:
    for note in result.notes:
        message(f"nsysan: {note}")
    if result.stale_removed:
        verb = "would remove" if result.dry_run else "removed"
        message(f"nsysan: {verb} {len(result.stale_removed)} temporary file(s) left by an interrupted run")
    for item in result.failed:
        message(f"nsysan: {item.line()}")


def _write_table(result: ExportResult, chosen: str, output: Path | None, inputs: list[Path]) -> None:
    if chosen != "table":
        frame, shape = views.EXPORT.apply(result.to_frame(), chosen)
        emit(frame, chosen, output, inputs=inputs, **shape)
        return
    # Without polars: the exporter runs where only the runner's packages are.
    rows = [{**item.to_dict(), "outputs": ", ".join(map(str, item.outputs.values()))} for item in result.items]
    text = rows_table(rows, views.EXPORT.columns, title=views.EXPORT.title,
                      width=terminal_width() if output is None else 200)
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_atomic(output, text.encode(), inputs=inputs)


def _tally(result: ExportResult) -> None:
    """The one-line tally on stderr, and the exit code: 3 when some reports failed, 1 when all did."""
    counts = result.counts
    done = ", ".join(f"{counts[key]} {label}" for key, label in (
        ("converted", "converted"), ("up_to_date", "up to date"), ("would_convert", "to convert"),
        ("failed", "failed")) if counts[key] or key in ("converted", "failed"))
    used = f" with {result.nsys.describe()}" if result.nsys is not None else ""
    message(f"nsysan: {counts['total']} report(s): {done} in {result.seconds:.1f} s{used}")
    if result.failed:
        raise typer.Exit(EXIT_PARTIAL if len(result.failed) < counts["total"] else EXIT_USER_ERROR)


@app.command()
def doctor(
    nsys: NsysOpt = None,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Also profile /bin/true, export it and read it back (a few seconds).")] = False,
    fmt: FormatOpt = None,
    output: Output = None,
) -> None:
    """Check the installation: nsys and its importer, DuckDB and its sqlite scanner, packages, GPUs and NUMA.

    Each line says ok / warn / missing / fail and how to fix it. Exit code 1 when a check fails.

    Example: nsysan doctor --deep
    """
    from nsysan.doctor import FAIL
    from nsysan.doctor import doctor as run_doctor

    with user_errors():
        chosen = infer_format(fmt, output)
        checks = run_doctor(nsys, deep=deep)
        if chosen == "table":
            # Sentences, not cells: each check on its line, the fix wrapped under it.
            text = views.checklist([c.to_dict() for c in checks], terminal_width() if output is None else 100)
            if output is None:
                typer.echo(text, nl=False)
            else:
                write_atomic(output, text.encode())
        else:
            import polars as pl

            frame = pl.DataFrame([c.to_dict() for c in checks], schema=dict.fromkeys(
                ("check", "status", "detail", "fix"), pl.String))
            emit(frame, chosen, output)
        failed = [c for c in checks if c.status == FAIL]
        if failed:
            message(f"nsysan: {len(failed)} check(s) failed: {', '.join(c.check for c in failed)}")
            raise typer.Exit(EXIT_USER_ERROR)

