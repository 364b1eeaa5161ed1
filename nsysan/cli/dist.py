"""``nsysan comm`` and ``nsysan skew``: NCCL communication per rank, and which rank makes the others wait."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from nsysan.cli import views
from nsysan.cli.options import (By, FormatOpt, Output, Paths, Sample, analyse, execution_options, keys_from,
                                selection_options, user_errors)
from nsysan.errors import NsysanError

app = typer.Typer()

MessageBytes = Annotated[Optional[str], typer.Option(
    "--message-bytes", help="Bytes per collective call, for bus bandwidth when the export does not record NCCL's "
    "message sizes: N for every collective, or COLLECTIVE=N,... (e.g. AllReduce=25000000).")]


def _message_bytes(text: str | None) -> Any:
    if not text:
        return None
    try:
        if "=" not in text:
            return int(text)
        return {key.strip(): int(value) for key, value in (part.split("=", 1) for part in text.split(","))}
    except ValueError:
        raise NsysanError(f"--message-bytes takes N or COLLECTIVE=N,... (whole bytes), not {text!r}") from None


@app.command()
@selection_options
@execution_options
def comm(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    by_stage: Annotated[bool, typer.Option("--by-stage", help="Also per NVTX range name of each rank (each "
                                           "instance from its start to its end).")] = False,
    message_bytes: MessageBytes = None,
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
) -> None:
    """NCCL communication per rank and collective: time, the compute it overlaps, and what is exposed.

    comm_ms and compute_ms are unions of NCCL and of other kernel intervals on the rank's device; overlap_ms
    their intersection; exposed_comm_ms = comm_ms - overlap_ms. Bus bandwidth follows NCCL's definitions
    when message sizes are known (docs/metrics.md, "Communication").

    Example: nsysan comm ddp_run.sqlite --message-bytes AllReduce=25000000
    """
    import nsysan

    keys = keys_from(by)
    with user_errors():
        sizes = _message_bytes(message_bytes)
    analyse(lambda runs, progress: nsysan.comm(runs, by=keys, by_stage=by_stage, message_bytes=sizes, select=select,
                                               progress=progress),
            views.COMM, paths=paths, sample=sample, fmt=fmt, output=output, keys=keys, selection=select.describe())


@app.command()
@selection_options
@execution_options
def skew(
    paths: Paths = None,
    sample: Sample = False,
    by: By = None,
    per_step: Annotated[bool, typer.Option("--per-step", help="The straggler of every step instead of the "
                                           "per-rank summary.")] = False,
    message_bytes: MessageBytes = None,
    fmt: FormatOpt = None,
    output: Output = None,
    select: object = None,
) -> None:
    """Arrival skew at NCCL collectives: how late each rank reaches each call, how long it waits, who is last.

    A call is matched across ranks by its order on the rank's NCCL stream (NCCL issues every rank's collectives
    in the same order); late = own kernel start - the earliest start of the call; wait = the last start - own
    start, within the kernel (docs/metrics.md, "Skew").

    Example: nsysan skew ddp_run.sqlite --per-step
    """
    import nsysan

    keys = keys_from(by)
    with user_errors():
        sizes = _message_bytes(message_bytes)
    analyse(lambda runs, progress: nsysan.skew(runs, by=keys, per_step=per_step, message_bytes=sizes, select=select,
                                               progress=progress),
            views.SKEW_STEPS if per_step else views.SKEW, paths=paths, sample=sample, fmt=fmt, output=output,
            keys=keys, selection=select.describe())
