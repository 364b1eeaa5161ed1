"""``nsysan doctor`` (nsysan/doctor.py): each check, against the real nsys releases and, for GPUs and NUMA, against
a fake ``nvidia-smi`` script and fake sysfs trees (the machine discovery the experiment runner uses too:
:func:`nsysan.host.discover`)."""
from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from typer.testing import CliRunner

import nsysan
from nsysan import doctor as doc
from nsysan.cli import app
from nsysan.doctor import Check, doctor, importer_check, machine_checks, nsys_checks
from nsysan.nsys_tool import find_nsys
from test_nsys_tool import fake_nsys

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=index,name,pci.bus_id,uuid,driver_version,memory.total*--format=csv,noheader*)
    echo "0, NVIDIA H100 80GB HBM3, 00000000:1B:00.0, GPU-1111, 580.159.04, 81559 MiB"
    echo "1, NVIDIA H100 80GB HBM3, 00000000:9A:00.0, GPU-2222, 580.159.04, 81559 MiB";;
  *) exit 2;;
esac
"""


def tools(folder: Path, **scripts: str) -> dict[str, str]:
    """A PATH holding only the given fake tools (name -> shell script); returns an environment for the checks."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(text)
        path.chmod(0o755)
    return {"PATH": str(folder), "HOME": str(folder.parent)}


def sysfs(root: Path, cpus: dict[int, str], gpu_nodes: dict[str, str]) -> Path:
    """A sysfs tree as Linux writes it: online nodes, each node's CPU list, and each GPU's numa_node."""
    nodes = root / "devices" / "system" / "node"
    nodes.mkdir(parents=True)
    (nodes / "online").write_text(",".join(map(str, cpus)) + "\n")
    (nodes / "has_cpu").write_text(",".join(str(n) for n, c in cpus.items() if c) + "\n")
    for node, cpu_list in cpus.items():
        (nodes / f"node{node}").mkdir()
        (nodes / f"node{node}" / "cpulist").write_text(cpu_list + "\n")
    for bus, node in gpu_nodes.items():
        device = root / "bus" / "pci" / "devices" / bus
        device.mkdir(parents=True)
        (device / "numa_node").write_text(f"{node}\n")
    return root


def test_gpus_and_two_numa_nodes(tmp_path: Path) -> None:
    environ = tools(tmp_path / "bin", nvidia_smi=NVIDIA_SMI, numactl="#!/bin/sh\n")
    root = sysfs(tmp_path / "sys", {0: "0-3,8-11", 1: "4-7,12-15"}, {"0000:1b:00.0": "0", "0000:9a:00.0": "1"})
    assert machine_checks(environ, root) == [
        Check("GPU 0", "ok", "NVIDIA H100 80GB HBM3, PCI 0000:1b:00.0, driver 580.159.04, 81559 MiB"),
        Check("GPU 1", "ok", "NVIDIA H100 80GB HBM3, PCI 0000:9a:00.0, driver 580.159.04, 81559 MiB"),
        Check("numactl", "ok", str(tmp_path / "bin" / "numactl")),
        Check("NUMA nodes", "ok", "2 nodes (node 0: cpus 0-3,8-11; node 1: cpus 4-7,12-15)"),
        Check("GPU 0 NUMA node", "ok", "node 0 (PCI 0000:1b:00.0)"),
        Check("GPU 1 NUMA node", "ok", "node 1 (PCI 0000:9a:00.0)"),
    ]


def test_one_numa_node_is_said_plainly(tmp_path: Path) -> None:
    environ = tools(tmp_path / "bin", nvidia_smi=NVIDIA_SMI)
    # GPU 0 reports -1 (a VM, as on our H100 machine); GPU 1 has no sysfs entry (a container without /sys/bus/pci).
    root = sysfs(tmp_path / "sys", {0: "0-15"}, {"0000:1b:00.0": "-1"})
    checks = {c.check: c for c in machine_checks(environ, root)}
    assert checks["NUMA nodes"] == Check(
        "NUMA nodes", "warn", "only one NUMA node (node 0: cpus 0-15): remote-node penalties cannot be measured on "
        "this machine", "run NUMA experiments on a multi-socket machine")
    for index in (0, 1):
        gpu = checks[f"GPU {index} NUMA node"]
        assert gpu.status == "warn" and gpu.detail.startswith("none reported by sysfs"), gpu
    assert checks["numactl"].status == "missing" and checks["numactl"].fix.startswith("apt-get install numactl")


def test_missing_tools_and_missing_sysfs(tmp_path: Path) -> None:
    environ = tools(tmp_path / "empty")
    checks = machine_checks(environ, sysfs(tmp_path / "sys", {0: "0-1"}, {}))
    assert checks[0] == Check(
        "GPUs", "missing", "nvidia-smi not found: no NVIDIA driver on this machine",
        "install the NVIDIA driver to profile GPU work (CPU captures and all analyses work without)")
    assert [(c.check, c.status) for c in checks[1:]] == [("numactl", "missing"), ("NUMA nodes", "warn")]
    unknown = machine_checks(environ, tmp_path / "nosys")[-1]
    assert (unknown.check, unknown.status) == ("NUMA nodes", "warn") and unknown.detail.startswith("unknown")


def test_failing_nvidia_smi_is_reported(tmp_path: Path) -> None:
    broken_smi = "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n"
    environ = tools(tmp_path / "bin", nvidia_smi=broken_smi)
    (smi, *_) = machine_checks(environ, sysfs(tmp_path / "sys", {0: "0", 1: "1"}, {}))
    assert smi == Check("GPUs", "warn", "GPUs not listed: none (nvidia-smi failed (NVIDIA-SMI has failed because it "
                        "couldn't communicate with the NVIDIA driver))",
                        "check the NVIDIA driver (nvidia-smi should list the GPUs)")


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
