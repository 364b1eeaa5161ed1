"""A figure worker: ``python -m nsysan.report.worker`` reads jobs from stdin and writes results to stdout, each a
pickle after its 8-byte length. A job is ``(kind, args, kwargs, fmt)`` for
:func:`nsysan.report.figures.render_figure`; the answer is its ``(status, value)``.

A plain child process (not :mod:`multiprocessing`), so that it never re-imports the caller's main module (a script
without a ``__main__`` guard, or ``python -m nsysan`` itself) and never inherits its threads.
"""
from __future__ import annotations

import pickle
import struct
import sys
from typing import Any, BinaryIO

HEADER = struct.Struct("<Q")


def send(stream: BinaryIO, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError("the other side closed the pipe")
    size = HEADER.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return pickle.loads(data)  # noqa: S301 - only ever from the process that started us


def main() -> None:
    from nsysan import plots
    from nsysan.report.figures import render_figure

    plots.load_all()  # import matplotlib before the first job arrives

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing a figure prints may corrupt the answers
    while True:
        try:
            job = receive(inp)
        except EOFError:
            return
        send(out, render_figure(*job))


if __name__ == "__main__":
    main()
