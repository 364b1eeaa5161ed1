"""``nsysan doctor`` (nsysan/doctor.py): each check, against the real nsys releases and, for GPUs and NUMA, against
fake ``nvidia-smi`` / ``numactl`` scripts and a fake sysfs tree (the single-node ``numactl --hardware`` text is the
real output of our H100 machine)."""
from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from typer.testing import CliRunner

import nsysan
from nsysan import doctor as doc
from nsysan.cli_export import app
from nsysan.doctor import Check, doctor, gpu_numa_checks, gpus, importer_check, numa_checks, nsys_checks, sysfs_bus_id
from nsysan.nsys_tool import find_nsys
from test_nsys_tool import fake_nsys

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=index,name,pci.bus_id,driver_version,memory.total*--format=csv,noheader*)
    echo "0, NVIDIA H100 80GB HBM3, 00000000:1B:00.0, 580.159.04, 81559 MiB"
    echo "1, NVIDIA H100 80GB HBM3, 00000000:9A:00.0, 580.159.04, 81559 MiB";;
  *) exit 2;;
esac
"""


def printing(text: str) -> str:
    """A shell script printing ``text`` with builtins only (the fake PATH holds no cat)."""
    assert "'" not in text
    return f"#!/bin/sh\nprintf '%s' '{text}'\n"


NUMACTL_TWO_NODES = printing("""available: 2 nodes (0-1)
node 0 cpus: 0 1 2 3 8 9 10 11
node 0 size: 257592 MB
node 0 free: 250001 MB
node 1 cpus: 4 5 6 7 12 13 14 15
node 1 size: 258041 MB
node 1 free: 251002 MB
node distances:
node   0   1
  0:  10  21
  1:  21  10
""")
# `numactl --hardware` on the H100 VM we profile on.
NUMACTL_ONE_NODE = printing("""available: 1 nodes (0)
node 0 cpus: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
node 0 size: 4443 MB
node 0 free: 3217 MB
node distances:
node   0
  0:  10
""")


def tools(folder: Path, **scripts: str) -> dict[str, str]:
    """A PATH holding only the given fake tools (name -> shell script); returns an environment for the checks."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(text)
        path.chmod(0o755)
    return {"PATH": str(folder), "HOME": str(folder.parent)}


def sysfs(root: Path, nodes: int, gpu_nodes: dict[str, str]) -> Path:
    for n in range(nodes):
        (root / "devices" / "system" / "node" / f"node{n}").mkdir(parents=True)
    for bus, node in gpu_nodes.items():
        device = root / "bus" / "pci" / "devices" / bus
        device.mkdir(parents=True)
        (device / "numa_node").write_text(f"{node}\n")
    return root


def test_sysfs_bus_id() -> None:
    assert sysfs_bus_id("00000000:1B:00.0") == "0000:1b:00.0"
    assert sysfs_bus_id("0000:00:06.0") == "0000:00:06.0"
    assert sysfs_bus_id("00000001:C3:00.0") == "0001:c3:00.0"


def test_gpus_and_two_numa_nodes(tmp_path: Path) -> None:
    environ = tools(tmp_path / "bin", nvidia_smi=NVIDIA_SMI, numactl=NUMACTL_TWO_NODES)
    root = sysfs(tmp_path / "sys", 2, {"0000:1b:00.0": "0", "0000:9a:00.0": "1"})
    gpu_lines, buses = gpus(environ)
    assert gpu_lines == [
        Check("GPU 0", "ok", "NVIDIA H100 80GB HBM3, PCI 00000000:1B:00.0, driver 580.159.04, 81559 MiB"),
        Check("GPU 1", "ok", "NVIDIA H100 80GB HBM3, PCI 00000000:9A:00.0, driver 580.159.04, 81559 MiB"),
    ]
    assert buses == [("0", "00000000:1B:00.0"), ("1", "00000000:9A:00.0")]
    assert numa_checks(environ, root) == [
        Check("numactl", "ok", str(tmp_path / "bin" / "numactl")),
        Check("NUMA nodes", "ok", "2 nodes (node 0: cpus 0-3,8-11, 257592 MB; node 1: cpus 4-7,12-15, 258041 MB)"),
    ]
    devices = root / "bus" / "pci" / "devices"
    assert gpu_numa_checks(buses, root) == [
        Check("GPU 0 NUMA node", "ok", f"node 0 ({devices / '0000:1b:00.0' / 'numa_node'})"),
        Check("GPU 1 NUMA node", "ok", f"node 1 ({devices / '0000:9a:00.0' / 'numa_node'})"),
    ]


def test_one_numa_node_is_said_plainly(tmp_path: Path) -> None:
    environ = tools(tmp_path / "bin", nvidia_smi=NVIDIA_SMI, numactl=NUMACTL_ONE_NODE)
    root = sysfs(tmp_path / "sys", 1, {"0000:1b:00.0": "-1"})
    numa = numa_checks(environ, root)
    assert numa[-1] == Check(
        "NUMA nodes", "warn", "only one NUMA node (node 0: cpus 0-15, 4443 MB): remote-node penalties cannot be "
        "measured on this machine", "run NUMA experiments on a multi-socket machine")
    (gpu0,) = gpu_numa_checks([("0", "00000000:1B:00.0")], root)
    assert (gpu0.status, gpu0.detail.split(" (")[0]) == ("warn", "none reported")
    # A GPU whose sysfs entry is absent (a container without /sys/bus/pci).
    (gone,) = gpu_numa_checks([("1", "00000000:9A:00.0")], root)
    assert gone.status == "missing" and "0000:9a:00.0/numa_node" in gone.detail


def test_missing_tools_fall_back_to_sysfs(tmp_path: Path) -> None:
    environ = tools(tmp_path / "empty")
    root = sysfs(tmp_path / "sys", 1, {})
    assert gpus(environ) == ([Check(
        "GPUs", "missing", "nvidia-smi not found: no NVIDIA driver on this machine",
        "install the NVIDIA driver to profile GPU work (CPU captures and all analyses work without)")], [])
    numa = numa_checks(environ, root)
    assert [(c.check, c.status) for c in numa] == [("numactl", "missing"), ("NUMA nodes", "warn")]
    assert numa[0].fix.startswith("apt-get install numactl")
    assert numa[1].detail.startswith(f"only one NUMA node (from {root / 'devices' / 'system' / 'node'}: node 0)")
    two = sysfs(tmp_path / "sys2", 2, {})
    assert numa_checks(environ, two)[1] == Check(
        "NUMA nodes", "ok", f"2 nodes (from {two / 'devices' / 'system' / 'node'}: node 0, node 1)")
    assert numa_checks(environ, tmp_path / "nosys")[1].detail.startswith("unknown")


def test_failing_tools_are_reported(tmp_path: Path) -> None:
    broken_smi = "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n"
    broken_numactl = "#!/bin/sh\necho 'No NUMA available on this system' >&2\nexit 1\n"
    environ = tools(tmp_path / "bin", nvidia_smi=broken_smi, numactl=broken_numactl)
    (smi,), buses = gpus(environ)
    assert (smi.status, buses) == ("warn", [])
    assert smi.detail == ("nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with "
                          "the NVIDIA driver")
    numa = numa_checks(environ, sysfs(tmp_path / "sys", 2, {}))
    assert numa[0] == Check("numactl", "warn", "numactl --hardware failed (exit 1): No NUMA available on this system",
                            "the kernel may lack NUMA support; check /sys/devices/system/node")
    assert numa[1].status == "ok" and numa[1].detail.startswith("2 nodes (from ")


def test_real_nsys_checks(nsys: str) -> None:
    printed = subprocess.run([nsys, "--version"], capture_output=True, text=True, timeout=60).stdout
    version = nsysan.nsys_tool.parse_version(printed)
    checks = {c.check: c for c in nsys_checks(nsys)}
    assert checks["nsys"].status == "ok"
    assert checks["nsys"].detail.startswith(f"{version} at {nsys} (from --nsys)")
    importer = Path(nsys).resolve().parent.parent / "host-linux-x64" / "QdstrmImporter"
    assert checks["nsys importer"] == Check("nsys importer", "ok", f"{importer} runs (NVIDIA Nsight Systems {version})")
    assert checks["nsys export types"] == Check("nsys export types", "ok", "sqlite and parquetdir")


def test_deep_round_trip_with_nsys_2022(nsys_2022: str) -> None:
    checks = {c.check: c for c in nsys_checks(nsys_2022, deep=True)}
    assert checks["nsys export types"].status == "warn"
    assert checks["nsys export types"].detail.startswith("sqlite only (nsys 2022.4 has no parquetdir)")
    assert checks["nsys round trip"] == Check(
        "nsys round trip", "ok", "profiled /bin/true, exported to SQLite and read it (export by nsys 2022.4.2.1)")
    assert checks["nsys importer"].status == "ok"


def test_broken_importer_in_the_nsight_compute_layout(tmp_path: Path) -> None:
    """The nsys bundled in Nsight Compute keeps QdstrmImporter in a sibling folder; on our GPU machine it lacks
    libdw (the message below is the one it printed there), so nsys profile writes only .qdstrm captures."""
    host = tmp_path / "nsight-compute" / "2025.3.1" / "host"
    tool = find_nsys(fake_nsys(host / "target-linux-x64" / "nsys", "2025.3.1.0"))
    importer = host / "linux-desktop-glibc_2_11_3-x64" / "QdstrmImporter"
    importer.parent.mkdir()
    importer.write_text(f"#!/bin/sh\necho '{importer}: error while loading shared libraries: libdw.so.1: cannot open "
                        "shared object file: No such file or directory' >&2\nexit 127\n")
    importer.chmod(0o755)
    assert tool.importer() == importer
    check = importer_check(tool)
    assert (check.status, check.fix) == ("fail", "install libdw.so.1 (Debian/Ubuntu: apt-get install libdw1)")
    assert check.detail.startswith(f"{importer} --version failed (exit 127): {importer}: error while loading shared "
                                   "libraries: libdw.so.1")
    importer.unlink()
    assert importer_check(tool).status == "missing"


def test_no_nsys(tmp_path: Path) -> None:
    environ = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    (missing,) = nsys_checks(environ=environ, globs=[])
    assert (missing.check, missing.status) == ("nsys", "missing")
    assert missing.detail.startswith("nsys not found: install Nsight Systems") and "--nsys" in missing.fix
    (wrong,) = nsys_checks(tmp_path / "nsys", environ=environ, globs=[])
    assert (wrong.status, wrong.detail) == ("fail", f"--nsys {tmp_path / 'nsys'}: no such file")


def test_python_side_checks() -> None:
    checks = {c.check: c for c in doc.package_checks() + doc.duckdb_checks()}
    for name in ("duckdb", "polars", "pyarrow", "typer"):
        assert checks[f"package {name}"] == Check(f"package {name}", "ok", metadata.version(name))
    assert "duckdb / sqlite scanner versions" not in checks  # installed in lockstep
    assert checks["duckdb sqlite scanner"].status == "ok"
    sample = nsysan.sample_paths()[0]
    with nsysan.open(sample) as report:
        ranges, kernels = report.table("nvtx_ranges").height, report.table("kernels").height
    assert ranges > 0 and kernels > 0
    assert checks["read sample"] == Check(
        "read sample", "ok", f"nsysan.open read {sample.name}: {ranges} NVTX ranges, {kernels} kernels")
    nvtx = metadata.version("nvtx")
    assert checks["package nvtx"].status == ("ok" if tuple(map(int, nvtx.split(".")[:3])) < (0, 2, 12) else "warn")


def test_doctor_cli(nsys: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["doctor", "--nsys", nsys, "--format", "json"])
    assert out.exit_code == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {"check", "status", "detail", "fix"} == set(rows[0])
    names = [r["check"] for r in rows]
    assert names[:2] == ["python", "package nsysan"] and "nsys" in names and "NUMA nodes" in names
    assert all(r["status"] in ("ok", "warn", "missing") for r in rows)
    assert next(r for r in rows if r["check"] == "nsys")["status"] == "ok"
    # Same records from the library.
    assert [r["check"] for r in rows] == [c.check for c in doctor(nsys)]

    failed = runner.invoke(app, ["doctor", "--nsys", str(tmp_path / "nope"), "-o", str(tmp_path / "d.csv")])
    assert failed.exit_code == 1
    assert failed.stderr.strip().splitlines()[-1] == "nsysan: 1 check(s) failed: nsys"
    assert (tmp_path / "d.csv").read_text().startswith("check,status,detail,fix\n")
