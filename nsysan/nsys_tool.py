"""Find the ``nsys`` command line tool, read its version, and run it with timeouts in its own process group.

Where nsys is looked for, in order of precedence:

1. an explicit path (``--nsys PATH`` / ``find_nsys(explicit=...)``): a binary or an install folder;
2. the environment variable ``NSYS``;
3. otherwise the **newest** working nsys among every ``nsys`` on ``PATH``, the usual install folders
   (:data:`INSTALL_GLOBS`: ``/opt/nvidia/nsight-systems/*/``, ``/usr/local/cuda*/bin``,
   ``/usr/lib/nsight-systems``, the nsys bundled in Nsight Compute) and nsysan's own cache
   (``~/.cache/nsysan/nsys-*/target-linux-x64/nsys``, written by ``scripts/install-nsys``).

nsys runs through :func:`nsysan.host.run`: in a new session, so that a timeout, a cancel or Ctrl-C stops it
together with every child it started, and a terminal's Ctrl-C does not reach it before nsysan has decided.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nsysan.errors import NsysanError
from nsysan.host import run

NSYS_ENV = "NSYS"
#: Install folders searched for nsys (besides PATH and nsysan's cache), as glob patterns.
INSTALL_GLOBS: tuple[str, ...] = (
    "/opt/nvidia/nsight-systems/*/bin/nsys",
    "/opt/nvidia/nsight-systems/*/target-linux-x64/nsys",
    "/usr/local/cuda*/bin/nsys",
    "/usr/lib/nsight-systems/bin/nsys",
    "/usr/lib/nsight-systems/target-linux-x64/nsys",
    "/usr/lib/nsight-systems/*/bin/nsys",
    "/usr/lib/nsight-systems/*/target-linux-x64/nsys",
    "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
)
INSTALL_HINT = ("install Nsight Systems (https://developer.nvidia.com/nsight-systems) or run scripts/install-nsys, "
                "then put nsys on PATH, set NSYS=/path/to/nsys or pass --nsys PATH")
VERSION_TIMEOUT_S = 60.0


class NsysNotFoundError(NsysanError):
    """No working nsys was found (or the one named explicitly does not work)."""


# -- versions ------------------------------------------------------------------------------------------------

_VERSION = re.compile(r"(?<!\d)(20\d\d)[.@](\d+)(?:[.@](\d+))?(?:[.@](\d+))?(?:-([0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*))?")


@dataclass(frozen=True, order=True)
class NsysVersion:
    """An nsys release: ``parts`` such as (2023, 4, 4, 54) order releases; ``text`` is how nsys spells it."""

    parts: tuple[int, ...]
    text: str

    @property
    def release(self) -> str:
        """Year and release of the year, e.g. ``2023.4``."""
        return ".".join(map(str, self.parts[:2]))

    def __str__(self) -> str:
        return self.text


def parse_version(text: str) -> NsysVersion | None:
    """The first nsys version in ``text``: ``nsys --version`` output (``... version 2023.4.4.54-234433681190v0``)
    or a report header's ``2023@4@4@54-234433681190v0``. None when there is none."""
    found = _VERSION.search(text)
    if not found:
        return None
    numbers = tuple(int(g) for g in found.groups()[:4] if g is not None)
    spelled = ".".join(map(str, numbers)) + (f"-{found[5]}" if found[5] else "")
    return NsysVersion(numbers, spelled)


# -- finding nsys ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Nsys:
    """A working nsys: where it is, its version, and how it was found (``--nsys``, ``NSYS``, ``PATH``, a folder)."""

    path: Path
    version: NsysVersion
    source: str

    def export_types(self) -> tuple[str, ...]:
        """The ``nsys export --type`` values this nsys accepts (from its help text)."""
        return parse_export_types(_export_help(str(self.path)))

    @property
    def exports_json_payloads(self) -> bool:
        """Whether ``nsys export`` takes ``--include-json`` (2025.1+): with it, NVTX extended payloads such as
        NCCL's (each rank's rank, each collective's message size) are exported as JSON in ``NVTX_EVENTS``."""
        return "--include-json" in _export_help(str(self.path))

    @property
    def supports_parquetdir(self) -> bool:
        return "parquetdir" in self.export_types()

    def importer(self) -> Path | None:
        """QdstrmImporter, which turns captures into reports: beside nsys or in a sibling of its folder
        (``host-linux-x64`` in Nsight Systems, ``linux-desktop-glibc_*-x64`` in the copy inside Nsight Compute)."""
        real = self.path.resolve()
        for candidate in (real.parent / "QdstrmImporter", *sorted(real.parent.parent.glob("*/QdstrmImporter"))):
            if candidate.is_file():
                return candidate
        return None

    def describe(self) -> str:
        return f"nsys {self.version} ({self.path}, from {self.source})"


@dataclass(frozen=True)
class Candidate:
    """One nsys found while searching: ``version`` when it works, else ``error``."""

    path: Path
    source: str
    version: NsysVersion | None
    error: str | None = None


_VERSION_CACHE: dict[tuple[str, int], NsysVersion | str] = {}
_HELP_CACHE: dict[str, str] = {}


def probe(path: Path) -> NsysVersion:
    """Run ``nsys --version``; raise :class:`NsysNotFoundError` with a one-line reason when it does not work."""
    real = path.resolve()
    try:
        key = (str(real), real.stat().st_mtime_ns)
    except OSError as e:
        raise NsysNotFoundError(f"{path}: {e.strerror or e}") from None
    cached = _VERSION_CACHE.get(key)
    if cached is None:
        if not os.access(real, os.X_OK) or not real.is_file():
            cached = "not an executable file"
        else:
            try:
                done = run([path, "--version"], timeout=VERSION_TIMEOUT_S)
            except OSError as e:
                cached = f"cannot run it ({e.strerror or e})"
            else:
                version = parse_version(done.stdout + "\n" + done.stderr)
                if done.timed_out:
                    cached = f"`nsys --version` did not answer within {VERSION_TIMEOUT_S:g} s"
                elif version is None:
                    cached = (f"`nsys --version` printed no version (exit {done.returncode}: "
                              f"{done.message() or 'no output'})")
                else:
                    cached = version
        _VERSION_CACHE[key] = cached
    if isinstance(cached, str):
        raise NsysNotFoundError(f"{path}: not a working nsys: {cached}")
    return cached


KNOWN_EXPORT_TYPES = ("sqlite", "hdf", "text", "json", "info", "arrow", "arrowdir", "parquetdir")


def parse_export_types(help_text: str) -> tuple[str, ...]:
    """The ``--type`` values listed by ``nsys export --help``: the "Possible values" right after the option
    (other options mention ``--type=json`` in passing); else every known type the text names."""
    found = re.search(r"--type=[ \t]*\n\s*Possible values are:?\s*(.*?)(?:\.\s|\n\s*\n)", help_text, re.S)
    if found:
        return tuple(n for n in re.findall(r"[a-z0-9]+", found[1]) if n not in ("and", "or"))
    return tuple(t for t in KNOWN_EXPORT_TYPES if re.search(rf"\b{t}\b", help_text))


def _export_help(path: str) -> str:
    if path not in _HELP_CACHE:
        done = run([path, "export", "--help"], timeout=VERSION_TIMEOUT_S)
        _HELP_CACHE[path] = done.stdout + "\n" + done.stderr
    return _HELP_CACHE[path]


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """nsysan's cache folder, as scripts/install-nsys computes it."""
    environ = os.environ if environ is None else environ
    if environ.get("NSYSAN_CACHE"):
        return Path(environ["NSYSAN_CACHE"])
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "nsysan"


def _resolve_explicit(raw: str | os.PathLike, source: str) -> Path:
    path = Path(raw).expanduser()
    if path.is_dir():
        for inner in ("nsys", "bin/nsys", "target-linux-x64/nsys", "host/target-linux-x64/nsys"):
            if (path / inner).is_file():
                return path / inner
        raise NsysNotFoundError(f"{source} {raw}: folder holds no nsys (looked for nsys, bin/nsys, "
                                "target-linux-x64/nsys)")
    if not path.exists():
        found = shutil.which(str(raw))
        if found and os.sep not in str(raw):
            return Path(found)
        raise NsysNotFoundError(f"{source} {raw}: no such file")
    return path


def candidates(environ: Mapping[str, str] | None = None,
               globs: Sequence[str] | None = None) -> list[Candidate]:
    """Every nsys on PATH, in the install folders and in nsysan's cache (one entry per real file), probed."""
    environ = os.environ if environ is None else environ
    found: list[tuple[Path, str]] = []
    for folder in (environ.get("PATH") or "").split(os.pathsep):
        if folder and (Path(folder) / "nsys").is_file():
            found.append((Path(folder) / "nsys", "PATH"))
    patterns = [(p, f"install folder {p}") for p in (INSTALL_GLOBS if globs is None else globs)]
    patterns.append((str(cache_root(environ) / "nsys-*" / "target-linux-x64" / "nsys"), "nsysan cache"))
    for pattern, source in patterns:
        for hit in sorted(glob.glob(pattern)):
            found.append((Path(hit), source))
    seen: set[Path] = set()
    out = []
    for path, source in found:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            out.append(Candidate(path, source, probe(path)))
        except NsysNotFoundError as e:
            out.append(Candidate(path, source, None, str(e)))
    return out


def find_nsys(explicit: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None,
              globs: Sequence[str] | None = None) -> Nsys:
    """The nsys to use: ``explicit``, else ``$NSYS``, else the newest working one found (see the module doc).

    Raises :class:`NsysNotFoundError` (one line, with the fix) when there is none."""
    environ = os.environ if environ is None else environ
    for raw, source in ((explicit, "--nsys"), (environ.get(NSYS_ENV), NSYS_ENV)):
        if raw:
            path = _resolve_explicit(raw, source)
            return Nsys(path, probe(path), source)
    working = [c for c in candidates(environ, globs) if c.version is not None]
    if not working:
        raise NsysNotFoundError(f"nsys not found: {INSTALL_HINT}")
    # The newest; among equals, the first found (PATH comes first).
    best = max(working, key=lambda c: c.version.parts)  # type: ignore[union-attr]
    return Nsys(best.path, best.version, best.source)  # type: ignore[arg-type]
