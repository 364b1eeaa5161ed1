"""The report's figures: drawn by :mod:`nsysan.plots` in worker processes (or this one) and encoded at once (SVG,
or PNG where an SVG would be too heavy), so that the figure objects are freed as the report is built.
"""
from __future__ import annotations

import base64
import io
import os
from typing import Any

import nsysan
from nsysan.report.model import Figure, Section

FIGURE_FORMATS = ("svg", "png")
#: An SVG larger than this is embedded as a PNG instead (a timeline of thousands of bars).
MAX_SVG_BYTES = 1_500_000
PNG_DPI = 110


def encode(fig: Any, *, fmt: str = "svg") -> tuple[str, bytes, int, int]:
    """(mime type, bytes, width px, height px) of a matplotlib figure; SVG falls back to PNG when large."""
    width, height = (int(round(v * 96)) for v in fig.get_size_inches())
    if fmt == "svg":
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        data = buffer.getvalue()
        if len(data) <= MAX_SVG_BYTES:
            return "image/svg+xml", data, width, height
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return "image/png", buffer.getvalue(), width, height


def data_url(figure: Figure) -> str:
    return f"data:{figure.mime};base64,{base64.b64encode(figure.data).decode()}"


def render_figure(kind: str, args: tuple, kwargs: dict[str, Any], fmt: str) -> tuple[str, Any]:
    """Draw ``nsysan.plots.<kind>(*args, **kwargs)`` and encode it as ``fmt``: ("ok", (mime, bytes, width,
    height)) or ("error", why). Runs in a worker process (everything here is picklable) or in the caller's."""
    from nsysan import plots

    try:
        fig = getattr(plots, kind)(*args, **kwargs)
        encoded = encode(fig, fmt=fmt)
        fig.clear()
        return "ok", encoded
    except (ValueError, KeyError, nsysan.NsysanError) as e:
        return "error", str(e)
    except Exception as e:  # noqa: BLE001 - a bug in one figure must not cost the whole report
        return "error", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


class _Worker:
    """One ``python -m nsysan.report.worker`` child; :meth:`run` sends a job and waits for its answer."""

    def __init__(self) -> None:
        import subprocess
        import sys

        # the worker imports the same nsysan as this process, wherever that comes from
        here = os.path.dirname(os.path.dirname(os.path.abspath(nsysan.__file__)))
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "nsysan.report.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})

    def run(self, job: tuple) -> tuple[str, Any]:
        from nsysan.report.worker import receive, send

        send(self.proc.stdin, job)
        return receive(self.proc.stdout)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a worker that will not stop is killed
            self.proc.kill()
            self.proc.wait()


class _Now:
    """A finished call, shaped like a future."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class Figures:
    """Draws the report's figures: in ``workers`` child processes (default two on a machine with two cores or
    more, started before the analyses so that they import matplotlib meanwhile; :mod:`nsysan.report.worker`) or
    in this one (``workers=0``). A figure that cannot be drawn becomes a sentence of its section."""

    def __init__(self, fmt: str = "svg", workers: int | None = None) -> None:
        if fmt not in FIGURE_FORMATS:
            raise nsysan.NsysanError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.jobs: list[tuple[Section, Figure, Any]] = []
        count = workers if workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 0)
        self.workers: list[_Worker] = []
        self.pool = None
        if count > 0:
            import queue
            from concurrent.futures import ThreadPoolExecutor

            self.workers = [_Worker() for _ in range(count)]
            self.idle: queue.Queue[_Worker] = queue.Queue()
            for worker in self.workers:
                self.idle.put(worker)
            self.pool = ThreadPoolExecutor(count)

    def _remote(self, job: tuple) -> tuple[str, Any]:
        worker = self.idle.get()
        try:
            return worker.run(job)
        finally:
            self.idle.put(worker)

    def add(self, section: Section, id: str, title: str, kind: str, *args: Any, caption: str = "",  # noqa: A002
            **kwargs: Any) -> str:
        """Queue ``nsysan.plots.<kind>(*args, **kwargs)`` as figure ``id`` of ``section``; returns ``id``."""
        job = self.pool.submit(self._remote, (kind, args, kwargs, self.fmt)) if self.pool else \
            _Now(render_figure(kind, args, kwargs, self.fmt))
        slot = Figure(id=id, title=title, mime="", data=b"", caption=caption)
        section.figures.append(slot)
        self.jobs.append((section, slot, job))
        return id

    def finish(self) -> set[str]:
        """Wait for every figure; returns the ids of those that could not be drawn."""
        failed = set()
        try:
            for section, slot, job in self.jobs:
                try:
                    status, value = job.result()
                except Exception as e:  # noqa: BLE001 - a worker that died
                    status, value = "error", f"{type(e).__name__}: {e}"
                if status == "ok":
                    slot.mime, slot.data, slot.width_px, slot.height_px = value
                else:
                    section.figures.remove(slot)
                    section.missing.append(f"The figure “{slot.title}” could not be drawn: {value}")
                    failed.add(slot.id)
        finally:
            self.close()
        return failed

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        for worker in self.workers:
            worker.close()
        self.workers = []



__all__ = ["FIGURE_FORMATS", "Figures", "data_url", "encode", "render_figure"]
