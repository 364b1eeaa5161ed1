"""What every nsysan command shares: its options (declared once), and the skeleton each analysis command runs.

Conventions (docs/cli.md): data to stdout or ``-o FILE`` (written atomically, never over an input or an nsys
export), messages and progress to stderr; ``--format table|csv|json|parquet``; exit codes of
:mod:`nsysan.errors` (0 ok, 1 user error, 2 usage, 3 some inputs of a batch failed, 130 interrupted).

Nothing here imports the analyses at import time (only the lazy :mod:`nsysan` API inside the commands), so the
command line starts fast and ``nsysan run`` works where polars and DuckDB are not installed.
"""
from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from nsysan import defaults
from nsysan.cli.views import View
from nsysan.errors import EXIT_PARTIAL, EXIT_USER_ERROR, NsysanError
from nsysan.render import FORMATS

if TYPE_CHECKING:
    from nsysan.collection import Collection
    from nsysan.engine import Result

SELECTION_PANEL = "Instance selection (the same for every command)"
STATS_PANEL = "Confidence intervals and verdicts"
EXECUTION_PANEL = "Execution: workers, cluster, cache"

Paths = Annotated[Optional[list[Path]], typer.Argument(
    help="nsys exports: .sqlite files, parquetdir folders, or folders to search recursively.", show_default=False)]
Sample = Annotated[bool, typer.Option("--sample", help="Analyse the sample sweep shipped with nsysan.")]
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", "-f", help=f"Output format: {'|'.join(FORMATS)} (default: from -o's extension, else table).")]
Output = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Write to this file (atomically; never over an input or an nsys export).")]
By = Annotated[Optional[str], typer.Option(
    "--by", help="Group by these comma-separated keys: report, run metadata (model, numa, variant, ...) or "
    "per-row keys (pid, device_id, ...). Default: report.")]
ByModel = Annotated[bool, typer.Option("--by-model", help="Pool the reports of a model (same as --by model,variant).")]
Names = Annotated[str, typer.Option(help="Kernel names: demangled | short | mangled.")]


def keys_from(by: str | None, by_model: bool = False, default: tuple[str, ...] = ("report",)) -> tuple[str, ...]:
    if by:
        return tuple(k.strip() for k in by.split(",") if k.strip())
    return ("model", "variant") if by_model else default


# -- option groups: parameters added to a command's signature, turned into one value -------------------------
def option_group(target: str | None, build: Callable[..., Any], **params: tuple[Any, Any]) -> Callable:
    """A decorator adding ``params`` (name -> (annotation, default)) to a command and passing
    ``build(**their values)`` to it as ``target`` (with no target, ``build`` only applies the options), so that
    an option group is declared once for all commands."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
                 for name, (annotation, default) in params.items()]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in params}
            with user_errors():
                built = build(**values)
            if target is not None:
                kwargs[target] = built
            return command(*args, **kwargs)

        # typer reads this signature (inspect stops unwrapping at it), with the command's annotations evaluated
        # in the command's own module.
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for p in signature.parameters.values() if p.name != target] + added)
        wrapper.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != target},
                                   **{name: annotation for name, (annotation, _) in params.items()}}
        return wrapper

    return decorate


def _selection(exclude_within: list[str] | None, all_instances: bool, skip_first: int, merge_numbered: bool,
               batches: list[str] | None) -> Any:
    import nsysan

    patterns = () if all_instances else tuple(exclude_within if exclude_within is not None
                                                 else [defaults.WARMUP_PATTERN])
    return nsysan.Selection(exclude_within=patterns, skip_first=0 if all_instances else skip_first,
                            merge_numbered=merge_numbered, batches=tuple(batches or defaults.BATCH_PATTERNS))


selection_options = option_group(
    "select", _selection,
    exclude_within=(Annotated[Optional[list[str]], typer.Option(
        "--exclude-within", rich_help_panel=SELECTION_PANEL, show_default=False,
        help=f"Leave out instances named like, or nested inside ranges named like, this glob, and the GPU work "
        f"they launched. Repeatable. Default: {defaults.WARMUP_PATTERN}; '' keeps them.")], None),
    all_instances=(Annotated[bool, typer.Option(
        "--all-instances", rich_help_panel=SELECTION_PANEL,
        help="Keep every instance (no warm-up exclusion, no --skip-first), as nsys stats counts them.")], False),
    skip_first=(Annotated[int, typer.Option(
        "--skip-first", min=0, rich_help_panel=SELECTION_PANEL,
        help="Also leave out the first N instances of every range name of each process.")], 0),
    merge_numbered=(Annotated[bool, typer.Option(
        "--merge-numbered/--no-merge-numbered", rich_help_panel=SELECTION_PANEL,
        help="Pool numbered ranges in statistics: batch_7 and batch_8 count as batch_*.")], True),
    batches=(Annotated[Optional[list[str]], typer.Option(
        "--batches", rich_help_panel=SELECTION_PANEL, show_default=False,
        help="Glob naming the per-batch (or per-step) ranges; the outermost matches are the measured batches. "
        f"Repeatable. Default: {' and '.join(defaults.BATCH_PATTERNS)}.")], None),
)


def _execution(jobs: str, scheduler: str | None, no_cache: bool) -> None:
    from nsysan import cache, parallel

    parallel.configure(jobs=jobs, scheduler=scheduler or "none")
    # Per command: without --no-cache the environment decides (NSYSAN_NO_CACHE), as it does in the library.
    cache.configure(enabled=False if no_cache else cache.FROM_ENVIRONMENT)


execution_options = option_group(
    None, _execution,
    jobs=(Annotated[str, typer.Option(
        "--jobs", "-j", rich_help_panel=EXECUTION_PANEL, envvar="NSYSAN_JOBS",
        help="Worker processes reading reports at once: a number, or auto (the cores this process may use).")],
        "auto"),
    scheduler=(Annotated[Optional[str], typer.Option(
        "--scheduler", rich_help_panel=EXECUTION_PANEL, envvar="NSYSAN_SCHEDULER", show_default=False,
        help="Run the per-report work on this Dask distributed scheduler (tcp://host:8786; pip install "
        "'nsysan[dask]'). Its workers must see the reports at the same paths.")], None),
    no_cache=(Annotated[bool, typer.Option(
        "--no-cache", rich_help_panel=EXECUTION_PANEL,
        help="Read every export again instead of the analysis cache, and write nothing to it "
        "(nsysan cache info says where it is).")], False),
)


def _stats(confidence: float, resamples: int, seed: int, min_effect: float, adjust: str, block: str) -> dict[str, Any]:
    if adjust not in ("bonferroni", "none"):
        raise NsysanError(f"--adjust must be bonferroni or none, not {adjust!r}")
    length: int | str = block
    if block != "auto":
        length = int(block) if block.isdigit() and int(block) >= 1 else 0
        if not length:
            raise NsysanError(f"--block must be auto or a positive integer, not {block!r}")
    return {"confidence": confidence, "resamples": resamples, "seed": seed, "min_effect_pct": min_effect,
            "adjust": adjust, "block": length}


stats_options = option_group(
    "stats", _stats,
    confidence=(Annotated[float, typer.Option(min=0.5, max=0.999, rich_help_panel=STATS_PANEL,
                                              help="Confidence of the bootstrap intervals.")], defaults.CONFIDENCE),
    resamples=(Annotated[int, typer.Option(min=100, rich_help_panel=STATS_PANEL, help=(
        "Bootstrap resamples (more are drawn when an interval's tails need them)."))], defaults.RESAMPLES),
    seed=(Annotated[int, typer.Option(rich_help_panel=STATS_PANEL, help=(
        "Seed of the bootstrap: the same seed gives the same intervals."))], defaults.SEED),
    min_effect=(Annotated[float, typer.Option("--min-effect", min=0, rich_help_panel=STATS_PANEL, help=(
        "Smallest change, in %, that a verdict calls slower/faster: the interval must lie wholly beyond it."))],
        defaults.MIN_EFFECT_PCT),
    adjust=(Annotated[str, typer.Option(rich_help_panel=STATS_PANEL, help=(
        "bonferroni: the intervals of one comparison hold together at --confidence; none: each on its own."))],
        "bonferroni"),
    block=(Annotated[str, typer.Option(rich_help_panel=STATS_PANEL, help=(
        "Bootstrap block length in instances: auto (n^1/3; keeps bursts of slow batches together) or N "
        "(1 = independent instances)."))], "auto"),
)


# -- the command skeleton -------------------------------------------------------------------------------------
def message(text: str, *, err: bool = True) -> None:
    """One line for the user (stderr unless ``err`` is False), kept on one line whatever file names it holds."""
    from nsysan.files import printable

    typer.echo(printable(text), err=err)


@contextmanager
def user_errors() -> Iterator[None]:
    """An :class:`NsysanError` becomes one line on stderr and exit code 1 (never a traceback)."""
    try:
        yield
    except NsysanError as e:
        message(f"nsysan: {e}")
        raise typer.Exit(EXIT_USER_ERROR) from None


def inputs_from(paths: list[Path] | None, sample: bool, output: Path | None) -> Collection:
    """The exports to analyse; refuses, before anything is read, an ``output`` that would overwrite one of
    them, their sidecars, or any nsys export."""
    import nsysan
    from nsysan.metadata import sidecar_path
    from nsysan.render import check_output

    chosen = list(paths or []) + (nsysan.sample_paths() if sample else [])
    if not chosen:
        raise NsysanError("no input: give export paths or --sample")
    runs = nsysan.collect(chosen)
    if not runs.paths:
        raise NsysanError(f"no nsys exports (.sqlite or parquetdir) found under {', '.join(map(str, chosen))}")
    if output is not None:
        check_output(output, [*chosen, *runs.paths, *map(sidecar_path, runs.paths)])
    return runs


@contextmanager
def progress_bar(total: int, what: str = "reading reports") -> Iterator[Callable[[Path], None] | None]:
    """A progress bar on stderr for batches, only when stderr is a terminal."""
    if total < 2 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda _path: bar.advance(task)


def show(result: Result, view: View, fmt: str, output: Path | None, *, keys: tuple[str, ...] = (),
         top: int | None = None, **fields: Any) -> None:
    """Notes on stderr, then the frame through its view. Without a frame, the notes are the answer: a table
    on the terminal prints them on stdout (a CSV or JSON stream stays clean)."""
    from nsysan.render import emit

    answer = result.frame.is_empty() and fmt == "table" and output is None
    for note in result.notes:
        message(f"nsysan: {note}", err=not answer)
    if result.frame.is_empty():
        return
    frame, shape = view.apply(result.frame, fmt, keys=keys, top=top, **fields)
    emit(frame, fmt, output, **shape)


def finish(result: Result, total: int) -> None:
    """Report the failed inputs and pick the exit code: 3 when some failed and others were analysed, 1 when
    nothing could be analysed."""
    for failure in result.failures:
        message(f"nsysan: {failure.reason}")
    if result.failures:
        if total > 1:
            message(f"nsysan: {len(result.failures)} of {total} input(s) failed; {result.analysed} analysed")
        raise typer.Exit(EXIT_PARTIAL if result.analysed else EXIT_USER_ERROR)


def analyse(call: Callable[[Collection, Callable[[Path], None] | None], Result], view: View, *,
            paths: list[Path] | None, sample: bool, fmt: str | None, output: Path | None,
            keys: tuple[str, ...] = (), top: int | None = None, **fields: Any) -> None:
    """The body of every analysis command: inputs, format, progress, the library call, the view, the exit code."""
    from nsysan.render import infer_format

    with user_errors():
        chosen = infer_format(fmt, output)
        runs = inputs_from(paths, sample, output)
        with progress_bar(len(runs)) as progress:
            result = call(runs, progress)
        show(result, view, chosen, output, keys=keys, top=top, **fields)
    finish(result, len(runs))
