"""The reference docs say what the code does: docs/cli.md is regenerated from ``--help`` and must match; every
example of docs/library.md runs, in order, on the bundled sample; the package's public names are documented."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nsysan
from nsysan.cli import reference

DOCS = Path(__file__).parents[1] / "docs"


def test_cli_reference_is_up_to_date():
    assert (DOCS / "cli.md").read_text() == reference.markdown(), (
        "docs/cli.md is stale: run `python -m nsysan.cli.reference > docs/cli.md`")


def test_library_examples_run():
    text = (DOCS / "library.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= len(nsysan.ANALYSES), "an analysis without an example"
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/library.md example {number}", "exec"), namespace)  # noqa: S102
        except Exception as e:  # noqa: BLE001 - name the example that failed
            raise AssertionError(f"docs/library.md example {number} failed: {type(e).__name__}: {e}\n{block}") from e


def test_every_analysis_has_a_section():
    text = (DOCS / "library.md").read_text()
    for name in nsysan.ANALYSES:
        assert f"## `{name}(" in text, name
    assert "## `numa_heatmap" in text or "nsysan.numa_heatmap(" in text


def test_import_is_lazy():
    """``import nsysan`` (and the command line) load neither polars, DuckDB nor Hydra until they are used."""
    code = ("import sys, nsysan, nsysan.cli; heavy = [m for m in ('polars', 'duckdb', 'hydra', 'omegaconf') "
            "if m in sys.modules]; print(heavy); assert not heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_public_names_are_exported():
    assert sorted(nsysan.__all__) == sorted({*nsysan._LAZY, "MissingDataError", "NotAnExportError", "NsysanError",
                                             "NsysanWarning", "__version__"})
    for name in nsysan.__all__:
        assert getattr(nsysan, name) is not None, name
