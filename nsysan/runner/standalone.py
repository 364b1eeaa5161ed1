"""Run studies where nsysan's analysis dependencies (polars, duckdb) are not installed, e.g. a GPU machine
that has torch, typer, rich and hydra-core only:

    python nsysan/runner/standalone.py experiment=quick_test hardware.gpu_ids=[0]

It is ``nsysan run`` from this checkout without installing nsysan: when ``import nsysan`` fails for a missing
package, the ``nsysan`` package is registered without running its ``__init__`` (which imports the analyses),
so that the runner's own modules load. ``analyze=true`` then exports the reports with nsys and leaves the
latency table to a machine with nsysan installed.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _prepare() -> None:
    # Run as a script, Python puts this folder first on sys.path: take it off (its modules are nsysan.runner's).
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import nsysan  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "nsysan" or m.startswith("nsysan.")]:
            del sys.modules[name]
        package = types.ModuleType("nsysan")
        package.__path__ = [str(ROOT / "nsysan")]  # type: ignore[attr-defined]
        package.__file__ = str(ROOT / "nsysan" / "__init__.py")
        sys.modules["nsysan"] = package


if __name__ == "__main__":
    _prepare()
    from nsysan.runner.command import main

    main()
