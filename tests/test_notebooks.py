"""The notebooks of notebooks/: committed without outputs, on the public API only, and each runs top to bottom
in a fresh kernel (nbclient) on the bundled sample, showing its figures; any error fails the test."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
#: What a notebook may import from nsysan: the package, its figures, and the known-answer exports of the docs.
PUBLIC = re.compile(r"^\s*(import nsysan\b|from nsysan import plots\b|from nsysan\.testing\.synthetic import )")


def test_the_notebooks_are_there():
    assert NAMES == ["01_quickstart", "02_scaling_and_stages", "03_compile_and_pipeline_design", "04_numa_penalty",
                     "05_bandwidth_and_utilization", "06_timeline", "07_distributed"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs_on_the_public_api(name):
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "strip the outputs"
    assert book.cells[0].cell_type == "markdown" and ("Your own" in book.cells[0].source)
    for cell in code:
        for line in cell.source.splitlines():
            if "nsysan" in line and re.match(r"^\s*(import|from)\b", line):
                assert PUBLIC.match(line), f"{name}: not the public API: {line}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_a_fresh_kernel(name, monkeypatch):
    from nbclient import NotebookClient

    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # the kernel imports this checkout's nsysan, whatever is installed
    root = str(NOTEBOOKS.parent)
    # (monkeypatch: later tests' subprocesses must not inherit it, the packaging test's installed nsysan above all)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    started = time.perf_counter()
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}},
                   allow_errors=False).execute()
    print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} showed no figure"
