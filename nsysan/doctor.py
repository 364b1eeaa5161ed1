"""``nsysan doctor``: is everything nsysan uses present and working on this machine?

:func:`doctor` returns one :class:`Check` per line: what was checked, ``ok`` / ``warn`` / ``missing`` / ``fail``,
what was found, and how to fix it. ``fail`` means something that is installed does not work (exit code 1 in
the CLI); ``missing`` an optional tool is absent; ``warn`` it works with a limitation.

Checked: Python and package versions; DuckDB's sqlite scanner and reading a bundled sample with
:func:`nsysan.open`; nsys (path, version, every other nsys found), its importer (QdstrmImporter present and
running, or with ``deep=True`` a real round trip: profile ``/bin/true``, export, read) and whether it exports
parquetdir; GPUs, NUMA nodes and each GPU's NUMA node exactly as the experiment runner finds them
(:func:`nsysan.host.discover`: nvidia-smi and sysfs), and numactl.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from nsysan import host, nsys_tool
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
    return checks + machine_checks(environ, Path(sysfs))


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
        done = host.run([importer, "--version"], timeout=TOOL_TIMEOUT_S)
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
            done = host.run(args, timeout=DEEP_TIMEOUT_S)
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

def machine_checks(environ: Mapping[str, str] | None = None, sysfs: Path = host.SYSFS) -> list[Check]:
    """GPUs, numactl, NUMA nodes and each GPU's NUMA node, as the experiment runner sees them
    (:func:`nsysan.host.discover`), saying plainly when remote-node penalties cannot be measured here."""
    machine = host.discover(environ=environ, sysfs=sysfs, ask_torch=False)
    return [*gpu_checks(machine), *numa_checks(machine), *gpu_numa_checks(machine)]


def gpu_checks(machine: host.Machine) -> list[Check]:
    if machine.gpus is None:
        if "not found" in machine.gpu_source:
            return [Check("GPUs", MISSING, "nvidia-smi not found: no NVIDIA driver on this machine",
                          "install the NVIDIA driver to profile GPU work (CPU captures and all analyses work "
                          "without)")]
        return [Check("GPUs", WARN, f"GPUs not listed: {machine.gpu_source}",
                      "check the NVIDIA driver (nvidia-smi should list the GPUs)")]
    if not machine.gpus:
        return [Check("GPUs", WARN, "nvidia-smi lists no GPU", "check the NVIDIA driver and the GPUs visible here")]
    return [Check(f"GPU {g.index}", OK, f"{g.name}, PCI {g.bus_id}, driver {g.driver}, {g.memory}")
            for g in machine.gpus]


def numa_checks(machine: host.Machine) -> list[Check]:
    out = [Check("numactl", OK, machine.numactl) if machine.numactl else
           Check("numactl", MISSING, "numactl not found: cannot pin runs to a NUMA node",
                 "apt-get install numactl (or your distribution's numactl package)")]
    nodes = machine.numa_nodes
    detail = "; ".join(f"node {n}: cpus {machine.node_cpus.get(n) or 'none'}" for n in nodes)
    if not machine.numa_known:
        out.append(Check("NUMA nodes", WARN, "unknown: sysfs shows no NUMA nodes (a kernel without NUMA support, "
                         "or /sys not visible here); one node assumed", "run on the host to see the NUMA layout"))
    elif len(nodes) == 1:
        out.append(Check("NUMA nodes", WARN, f"only one NUMA node ({detail}): remote-node penalties cannot be "
                         "measured on this machine", "run NUMA experiments on a multi-socket machine"))
    else:
        out.append(Check("NUMA nodes", OK, f"{len(nodes)} nodes ({detail})"))
    return out


def gpu_numa_checks(machine: host.Machine) -> list[Check]:
    """Each GPU's NUMA node from sysfs (none: the firmware reports -1, as in most VMs and one-socket machines)."""
    out = []
    for g in machine.gpus or []:
        if g.numa_node is None:
            out.append(Check(f"GPU {g.index} NUMA node", WARN, f"none reported by sysfs for PCI {g.bus_id} (-1 or "
                             "unreadable: a VM, a one-node machine or a container without /sys); GPU-NUMA affinity "
                             "is unknown", "use `nvidia-smi topo -m` on the host"))
        else:
            out.append(Check(f"GPU {g.index} NUMA node", OK, f"node {g.numa_node} (PCI {g.bus_id})"))
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
