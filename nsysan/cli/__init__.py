"""The ``nsysan`` command: a thin layer over :mod:`nsysan.api` (one module per command family).

* :mod:`~nsysan.cli.stages`: ``latency``, ``info``;
* :mod:`~nsysan.cli.gpu`: ``kernels``, ``bandwidth``, ``utilization``, ``throughput``;
* :mod:`~nsysan.cli.compare`: ``compare``, ``numa``;
* :mod:`~nsysan.cli.dist`: ``comm``, ``skew`` (distributed runs);
* :mod:`~nsysan.cli.report`: ``report`` (one HTML page), ``plot`` (one figure);
* :mod:`~nsysan.cli.export`: ``export``, ``doctor``;
* :mod:`~nsysan.cli.run`: ``run`` (the experiment runner);
* :mod:`~nsysan.cli.cache`: ``cache info``, ``cache clear`` (the analysis cache);
* :mod:`~nsysan.cli.options`: the options every command shares and the command skeleton;
* :mod:`~nsysan.cli.views`: how each result is shown as a table.

The reference, generated from ``--help``, is docs/cli.md.
"""
from __future__ import annotations

import atexit
import gc
import os
import sys
import threading

# A command creates over 2 M container objects (its imports, then bookkeeping per report) and few cycles; at the
# default thresholds the collector ran ~120 times in a cached sweep, ~0.05 s of its ~0.7 s. The library leaves
# the interpreter's settings alone: this is the command's own process.
gc.set_threshold(100_000, 20, 10)

import typer  # noqa: E402 - after the threshold, which the imports are most of the work for

from nsysan.cli import cache, compare, dist, export, gpu, report, run, stages  # noqa: E402

app = typer.Typer(
    name="nsysan", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown",
    help="Answers from Nsight Systems profiles: per-stage latency, kernels, copies, GPU utilization, comparisons "
    "and NUMA penalties, over many reports.",
)
for family in (stages, gpu, compare, dist, report, export, run, cache):
    app.add_typer(family.app)


def main() -> None:
    try:
        app()
    except SystemExit as done:  # typer ends every command so, success included
        _exit(done.code)


def _exit(code: object) -> None:
    """End the process as Python would, less the teardown of every imported module (polars' alone is ~0.07 s;
    0.1-0.15 s of a cached command's ~0.7 s): wait for the threads, flush, run the atexit functions (workers,
    temporary files), then leave."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # what SystemExit("message") prints
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # a reader that went away, or a stream already closed
        pass
    atexit._run_exitfuncs()
    os._exit(code or 0)
