"""``nsysan doctor``: is everything nsysan uses present and working on this machine?

:func:`doctor` returns one :class:`Check` per line: what was checked, ``ok`` / ``warn`` / ``missing`` / ``fail``,
what was found, and how to fix it. ``fail`` means something that is installed does not work (exit code 1 in
the CLI); ``missing`` an optional tool is absent; ``warn`` it works with a limitation.

Checked: Python and package versions; DuckDB's sqlite scanner and reading a bundled sample with
:func:`nsysan.open`; nsys (path, version, every other nsys found), its importer (QdstrmImporter present and
running, or with ``deep=True`` a real round trip: profile ``/bin/true``, export, read) and whether it exports
parquetdir; GPUs (``nvidia-smi``); NUMA nodes (``numactl --hardware``, else sysfs) and each GPU's NUMA node
(``/sys/bus/pci/devices/<bus>/numa_node``).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from nsysan import nsys_tool
from nsysan.nsys_tool import Nsys, NsysNotFoundError

OK, WARN, MISSING, FAIL = "ok", "warn", "missing", "fail"
PACKAGES = ("nsysan", "duckdb", "duckdb-extension-sqlite", "polars", "pyarrow", "numpy", "typer", "rich")
TOOL_TIMEOUT_S = 60.0
#: Libraries QdstrmImporter is known to miss, and the Debian/Ubuntu package that provides each.
LIBRARY_PACKAGES = {"libssh.so.4": "libssh-4", "libpfm.so.4": "libpfm4", "libdw.so.1": "libdw1",
                    "libelf.so.1": "libelf1"}
DEEP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    check: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def doctor(nsys: str | Path | None = None, *, deep: bool = False, environ: Mapping[str, str] | None = None,
           nsys_globs: Sequence[str] | None = None, sysfs: str | Path = "/sys") -> list[Check]:
    """Run every check. ``nsys``: the nsys to check (default: the one :func:`nsysan.nsys_tool.find_nsys` picks).
    ``environ`` (PATH, NSYS, HOME, ...), ``nsys_globs`` and ``sysfs`` replace the real ones, for tests."""
    environ = os.environ if environ is None else environ
    checks = [python_check(), *package_checks(), *duckdb_checks()]
    checks += nsys_checks(nsys, deep=deep, environ=environ, globs=nsys_globs)
    gpu_checks, buses = gpus(environ)
    checks += gpu_checks
    checks += numa_checks(environ, Path(sysfs))
    checks += gpu_numa_checks(buses, Path(sysfs))
    return checks


# -- Python side -------------------------------------------------------------------------------------------------

def python_check() -> Check:
    return Check("python", OK, f"Python {sys.version.split()[0]} ({sys.executable})")


def package_checks() -> list[Check]:
    out = []
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(Check(f"package {name}", MISSING, "not installed",
                             f"pip install {name if name != 'nsysan' else '-e . (in the nsysan checkout)'}"))
        else:
            out.append(Check(f"package {name}", OK, versions[name]))
    duck, scanner = versions.get("duckdb"), versions.get("duckdb-extension-sqlite")
    if duck and scanner and duck != scanner:
        out.append(Check("duckdb / sqlite scanner versions", FAIL,
                         f"duckdb {duck} but duckdb-extension-sqlite {scanner}: the scanner only loads into the "
                         "DuckDB release it was built for", f"pip install duckdb-extension-sqlite=={duck}"))
    try:
        nvtx = metadata.version("nvtx")
    except metadata.PackageNotFoundError:
        out.append(Check("package nvtx", MISSING, "not installed (only needed to run workloads/ and the tests)",
                         "pip install 'nvtx<0.2.12'"))
    else:
        parts = tuple(int(p) for p in re.findall(r"\d+", nvtx)[:3])
        if parts >= (0, 2, 12):
            out.append(Check("package nvtx", WARN, f"{nvtx}: its ranges vanish from CPU captures made with nsys "
                             "2022.4/2023.4 (they do not answer nvtxDomainIsEnabled)", "pip install 'nvtx<0.2.12'"))
        else:
            out.append(Check("package nvtx", OK, nvtx))
    return out


def duckdb_checks() -> list[Check]:
    """The sqlite scanner loads into DuckDB, and nsysan.open reads a bundled sample."""
    out = []
    try:
        import duckdb

        from nsysan.load import _sqlite_extension

        extension = _sqlite_extension()
        con = duckdb.connect()
        try:
            con.execute(f"LOAD '{str(extension).replace(chr(39), chr(39) * 2)}'")
        finally:
            con.close()
    except Exception as e:  # noqa: BLE001 - any failure here is the thing being diagnosed
        out.append(Check("duckdb sqlite scanner", FAIL, f"cannot load it: {_first_line(e)}",
                         "pip install --force-reinstall duckdb==X duckdb-extension-sqlite==X (the same X)"))
        return out
    out.append(Check("duckdb sqlite scanner", OK, f"duckdb {duckdb.__version__}, scanner {extension}"))
    try:
        import nsysan

        samples = nsysan.sample_paths()
        if not samples:
            out.append(Check("read sample", FAIL, "no sample exports are installed with nsysan",
                             "reinstall nsysan (pip install -e .)"))
            return out
        with nsysan.open(samples[0]) as report:
            ranges = report.sql("SELECT count(*) FROM nvtx_ranges").fetchone()[0]
            kernels = report.sql("SELECT count(*) FROM kernels").fetchone()[0]
    except Exception as e:  # noqa: BLE001
        out.append(Check("read sample", FAIL, f"nsysan.open failed on a bundled sample: {_first_line(e)}",
                         "reinstall nsysan and its dependencies (pip install -e .)"))
        return out
    out.append(Check("read sample", OK, f"nsysan.open read {samples[0].name}: {ranges} NVTX ranges, {kernels} kernels"))
    return out


# -- nsys ------------------------------------------------------------------------------------------------------

def nsys_checks(explicit: str | Path | None = None, *, deep: bool = False, environ: Mapping[str, str] | None = None,
                globs: Sequence[str] | None = None) -> list[Check]:
    environ = os.environ if environ is None else environ
    try:
        tool = nsys_tool.find_nsys(explicit, environ=environ, globs=globs)
    except NsysNotFoundError as e:
        status = FAIL if (explicit or environ.get(nsys_tool.NSYS_ENV)) else MISSING
        return [Check("nsys", status, str(e), nsys_tool.INSTALL_HINT + " (needed by nsysan export, not by the analyses)")]
    others = [c for c in nsys_tool.candidates(environ, globs) if c.path.resolve() != tool.path.resolve()]
    also = "; also found: " + ", ".join(
        f"{c.version or 'broken'} at {c.path}" for c in others) if others else ""
    out = [Check("nsys", OK, f"{tool.version} at {tool.path} (from {tool.source}){also}")]
    out.append(importer_check(tool))
    types = tool.export_types()
    if "sqlite" not in types:
        out.append(Check("nsys export types", FAIL, f"`nsys export --help` lists no sqlite type ({', '.join(types)})",
                         "reinstall Nsight Systems"))
    elif "parquetdir" in types:
        out.append(Check("nsys export types", OK, "sqlite and parquetdir"))
    else:
        out.append(Check("nsys export types", WARN, f"sqlite only (nsys {tool.version.release} has no parquetdir): "
                         "nsysan export --type both writes SQLite only", "nsys 2023.1 or newer exports parquetdir"))
    if deep:
        out.append(round_trip_check(tool))
    return out


def importer_check(tool: Nsys) -> Check:
    """QdstrmImporter (turns a capture into a report at the end of ``nsys profile``) is present and runs."""
    importer = tool.importer()
    if importer is None:
        return Check("nsys importer", MISSING, f"no QdstrmImporter beside {tool.path}: nsys profile cannot write "
                     "reports (exporting existing reports still works)", "reinstall Nsight Systems (host package)")
    try:
        done = nsys_tool.run([importer, "--version"], timeout=TOOL_TIMEOUT_S)
    except OSError as e:
        return Check("nsys importer", FAIL, f"{importer} cannot run: {e.strerror or e}", "reinstall Nsight Systems")
    if done.returncode != 0 or done.timed_out:
        missing = re.search(r"loading shared libraries: (\S+?):", done.stderr + done.stdout)
        if missing:
            package = LIBRARY_PACKAGES.get(missing[1], f"the package that provides {missing[1]}")
            fix = f"install {missing[1]} (Debian/Ubuntu: apt-get install {package})"
        else:
            fix = "reinstall Nsight Systems"
        return Check("nsys importer", FAIL, f"{importer} --version failed (exit {done.returncode}): {done.message()}; "
                     "nsys profile then writes only .qdstrm captures, not reports", fix)
    return Check("nsys importer", OK, f"{importer} runs ({done.message()})")


def round_trip_check(tool: Nsys) -> Check:
    """Profile ``/bin/true`` (NVTX only, no sampling: works with every nsys we know), export it, read it."""
    import nsysan

    with tempfile.TemporaryDirectory(prefix="nsysan-doctor-") as folder:
        report = Path(folder) / "doctor.nsys-rep"
        steps = (
            ("nsys profile", [tool.path, "profile", "-t", "nvtx", "-s", "none", "--cpuctxsw=none", "-o", report,
                              "/bin/true"]),
            ("nsys export", [tool.path, "export", "--type", "sqlite", "--quiet", "true", "-o",
                             report.with_suffix(".sqlite"), report]),
        )
        for what, args in steps:
            done = nsys_tool.run(args, timeout=DEEP_TIMEOUT_S)
            if done.returncode != 0 or done.timed_out:
                why = "timed out" if done.timed_out else f"exit {done.returncode}"
                return Check("nsys round trip", FAIL, f"{what} failed ({why}): {done.message()}",
                             "run `nsys status -e` and check the importer line above")
            if what == "nsys profile" and not report.exists():
                # nsys keeps the raw .qdstrm capture when its importer cannot run.
                left = ", ".join(p.name for p in Path(folder).iterdir()) or "nothing"
                return Check("nsys round trip", FAIL, f"nsys profile wrote no report (left {left}): "
                             f"{done.message()}", "fix the importer (see the nsys importer line)")
        try:
            with nsysan.open(report.with_suffix(".sqlite")) as opened:
                version = opened.metadata.get("EXPORT_PRODUCT_VERSION", "?")
        except Exception as e:  # noqa: BLE001
            return Check("nsys round trip", FAIL, f"nsysan cannot read the export: {_first_line(e)}",
                         "report this nsys version to the nsysan maintainers")
    return Check("nsys round trip", OK, f"profiled /bin/true, exported to SQLite and read it (export by nsys {version})")


# -- GPUs and NUMA ---------------------------------------------------------------------------------------------

def _which(name: str, environ: Mapping[str, str]) -> str | None:
    return shutil.which(name, path=environ.get("PATH", ""))


def gpus(environ: Mapping[str, str] | None = None) -> tuple[list[Check], list[tuple[str, str]]]:
    """One check per GPU from nvidia-smi, and (index, PCI bus id) of each GPU."""
    environ = os.environ if environ is None else environ
    smi = _which("nvidia-smi", environ)
    if smi is None:
        return [Check("GPUs", MISSING, "nvidia-smi not found: no NVIDIA driver on this machine",
                      "install the NVIDIA driver to profile GPU work (CPU captures and all analyses work without)")], []
    done = nsys_tool.run([smi, "--query-gpu=index,name,pci.bus_id,driver_version,memory.total",
                          "--format=csv,noheader"], timeout=TOOL_TIMEOUT_S, env=environ)
    if done.returncode != 0 or done.timed_out:
        return [Check("GPUs", WARN, f"nvidia-smi failed (exit {done.returncode}): {done.message()}",
                      "check the NVIDIA driver (nvidia-smi should list the GPUs)")], []
    checks, buses = [], []
    for line in done.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        index, name, bus, driver, memory = fields[:5]
        checks.append(Check(f"GPU {index}", OK, f"{name}, PCI {bus}, driver {driver}, {memory}"))
        buses.append((index, bus))
    if not checks:
        return [Check("GPUs", WARN, "nvidia-smi lists no GPU", "check the NVIDIA driver and the GPUs visible here")], []
    return checks, buses


def _node_list(text: str) -> list[int]:
    nodes = []
    for part in text.replace(" ", "").split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            nodes += range(int(low), int(high) + 1)
        elif part.isdigit():
            nodes.append(int(part))
    return nodes


def numa_checks(environ: Mapping[str, str] | None = None, sysfs: Path = Path("/sys")) -> list[Check]:
    """numactl's view of the NUMA nodes (sysfs when numactl is missing), saying plainly when there is one."""
    environ = os.environ if environ is None else environ
    out = []
    nodes: list[int] | None = None
    detail = ""
    numactl = _which("numactl", environ)
    if numactl is None:
        out.append(Check("numactl", MISSING, "numactl not found: cannot pin runs to a NUMA node",
                         "apt-get install numactl (or your distribution's numactl package)"))
    else:
        done = nsys_tool.run([numactl, "--hardware"], timeout=TOOL_TIMEOUT_S, env=environ)
        found = re.search(r"available:\s*(\d+)\s*nodes?\s*\(([^)]*)\)", done.stdout)
        if done.returncode != 0 or not found:
            out.append(Check("numactl", WARN, f"numactl --hardware failed (exit {done.returncode}): {done.message()}",
                             "the kernel may lack NUMA support; check /sys/devices/system/node"))
        else:
            out.append(Check("numactl", OK, numactl))
            nodes = _node_list(found[2]) or list(range(int(found[1])))
            cpus = dict(re.findall(r"node (\d+) cpus:[ \t]*([^\n]*)", done.stdout))
            sizes = dict(re.findall(r"node (\d+) size:\s*(\d+ \w+)", done.stdout))
            detail = "; ".join(f"node {n}: cpus {_cpu_ranges(cpus.get(str(n), ''))}, {sizes.get(str(n), '? MB')}"
                               for n in nodes)
    if nodes is None:
        node_dir = sysfs / "devices" / "system" / "node"
        found_nodes = sorted(int(p.name[4:]) for p in node_dir.glob("node[0-9]*")) if node_dir.is_dir() else []
        if not found_nodes:
            out.append(Check("NUMA nodes", WARN, f"unknown (no numactl and no {node_dir})",
                             "apt-get install numactl"))
            return out
        nodes = found_nodes
        detail = f"from {node_dir}: " + ", ".join(f"node {n}" for n in nodes)
    if len(nodes) == 1:
        out.append(Check("NUMA nodes", WARN, f"only one NUMA node ({detail}): remote-node penalties cannot be "
                         "measured on this machine", "run NUMA experiments on a multi-socket machine"))
    else:
        out.append(Check("NUMA nodes", OK, f"{len(nodes)} nodes ({detail})"))
    return out


def _cpu_ranges(cpus: str) -> str:
    """``0 1 2 3 8 9`` -> ``0-3,8-9``."""
    numbers = sorted(int(c) for c in cpus.split() if c.isdigit())
    if not numbers:
        return "none"
    spans, start, prev = [], numbers[0], numbers[0]
    for n in numbers[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        spans.append(f"{start}-{prev}" if prev != start else f"{start}")
        if n is not None:
            start = prev = n
    return ",".join(spans)


def sysfs_bus_id(bus: str) -> str:
    """nvidia-smi's ``00000000:1B:00.0`` as sysfs names it: ``0000:1b:00.0``."""
    parts = bus.strip().lower().split(":")
    if len(parts) == 3:
        parts[0] = parts[0][-4:].rjust(4, "0")
    return ":".join(parts)


def gpu_numa_checks(buses: Sequence[tuple[str, str]], sysfs: Path = Path("/sys")) -> list[Check]:
    """Each GPU's NUMA node from sysfs (-1: the firmware reports none, as in most VMs and one-socket machines)."""
    out = []
    for index, bus in buses:
        path = sysfs / "bus" / "pci" / "devices" / sysfs_bus_id(bus) / "numa_node"
        try:
            node = int(path.read_text().strip())
        except (OSError, ValueError) as e:
            out.append(Check(f"GPU {index} NUMA node", MISSING, f"cannot read {path} ({_first_line(e)})",
                             "run on the host (not in a container without /sys) to see GPU-NUMA affinity"))
            continue
        if node < 0:
            out.append(Check(f"GPU {index} NUMA node", WARN, f"none reported ({path} = {node}): a VM or a one-node "
                             "machine; GPU-NUMA affinity is unknown", "use `nvidia-smi topo -m` on the host"))
        else:
            out.append(Check(f"GPU {index} NUMA node", OK, f"node {node} ({path})"))
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
