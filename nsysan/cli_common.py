"""What every nsysan command shares: option types, exit codes, error and progress handling.

Command modules (:mod:`nsysan.cli`, :mod:`nsysan.cli_gpu`, :mod:`nsysan.cli_compare`, :mod:`nsysan.cli_export`)
import from here, so none of them imports another.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from nsysan.collection import Collection, collect
from nsysan.errors import NsysanError
from nsysan.metadata import sidecar_path
from nsysan.render import FORMATS, check_output
from nsysan.sample import sample_paths

EXIT_USER_ERROR = 1
EXIT_PARTIAL = 3

Paths = Annotated[Optional[list[Path]], typer.Argument(
    help="nsys exports: .sqlite files, parquetdir folders, or folders to search recursively.", show_default=False)]
Sample = Annotated[bool, typer.Option("--sample", help="Analyse the sample sweep shipped with nsysan.")]
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", "-f", help=f"Output format: {'|'.join(FORMATS)} (default: from -o's extension, else table).")]
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file (atomically).")]
By = Annotated[Optional[str], typer.Option(
    "--by", help="Group by these comma-separated metadata keys (e.g. model,numa) instead of per report.")]


def message(text: str) -> None:
    typer.echo(text, err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except NsysanError as e:
        message(f"nsysan: {e}")
        raise typer.Exit(EXIT_USER_ERROR) from None


def runs_from(paths: list[Path] | None, sample: bool, output: Path | None = None) -> Collection:
    """The exports to analyse; refuses, before anything is read, an ``output`` that would overwrite one
    of them, their sidecars, or any nsys export."""
    chosen = list(paths or []) + (sample_paths() if sample else [])
    if not chosen:
        raise NsysanError("no input: give export paths or --sample")
    runs = collect(chosen)
    if not runs.paths:
        raise NsysanError(f"no nsys exports (.sqlite or parquetdir) found under {', '.join(map(str, chosen))}")
    if output is not None:
        check_output(output, [*chosen, *runs.paths, *map(sidecar_path, runs.paths)])
    return runs


@contextmanager
def progress_bar(total: int) -> Iterator[Callable[[Path], None] | None]:
    """A progress bar on stderr for batches, only when stderr is a terminal."""
    if total < 2 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("reading reports"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reports", total=total)
        yield lambda _path: bar.advance(task)


def finish(runs: Collection, analysed: bool) -> None:
    """Report failed inputs and pick the exit code."""
    for failure in runs.failures:
        message(f"nsysan: {failure.reason}")
    if runs.failures:
        ok = len(runs.paths) - len(runs.failures)
        if len(runs.paths) > 1:
            message(f"nsysan: {len(runs.failures)} of {len(runs.paths)} input(s) failed; {ok} analysed")
        raise typer.Exit(EXIT_PARTIAL if analysed and ok else EXIT_USER_ERROR)


def keys_from(by: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k.strip() for k in by.split(",") if k.strip()) if by else default
