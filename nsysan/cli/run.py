"""The ``nsysan run`` command (registered into :mod:`nsysan.cli`): run a study under nsys with Hydra overrides.

    nsysan run experiment=numa_study hardware.gpu_ids=[0,1] test.num_samples=500
    nsysan run -m experiment=compile_study test.compile_model=true,false
    nsysan run experiment=quick_test hardware=cpu --dry-run

Unknown options and ``key=value`` arguments are passed on to Hydra. The command itself lives in
:mod:`nsysan.runner.command` (it imports no analysis package, so the runner also works without them).
"""
from __future__ import annotations

import typer

from nsysan.runner.command import CONTEXT, run

app = typer.Typer()
app.command(context_settings=CONTEXT)(run)
