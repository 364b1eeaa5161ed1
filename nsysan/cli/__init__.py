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

import gc

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
    app()
