"""What this machine has: NUMA nodes (sysfs), GPUs (nvidia-smi, CUDA_VISIBLE_DEVICES, else torch) and numactl.

Nothing is assumed: a node or GPU that is not found here is reported and its runs are skipped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NODE_ROOT = Path("/sys/devices/system/node")
PCI_ROOT = Path("/sys/bus/pci/devices")


def parse_list(text: str) -> list[int]:
    """The kernel's list format: ``0-3,8`` -> [0, 1, 2, 3, 8]."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if part:
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def sysfs_bus_id(bus_id: str) -> str:
    """nvidia-smi's ``00000000:1B:00.0`` -> sysfs's ``0000:1b:00.0``."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest}" if rest else bus_id.lower()
    except ValueError:
        return bus_id.lower()


def gpu_numa_node(bus_id: str | None, root: Path = PCI_ROOT) -> int | None:
    """The NUMA node sysfs gives a PCI device; None when unknown (no such file, or -1 as in most VMs)."""
    if not bus_id:
        return None
    try:
        node = int((root / sysfs_bus_id(bus_id) / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


@dataclass
class Gpu:
    index: int                    # as CUDA numbers it in the runs (after CUDA_VISIBLE_DEVICES)
    name: str | None = None
    bus_id: str | None = None
    uuid: str | None = None
    numa_node: int | None = None


@dataclass
class Machine:
    """``gpus`` is None when GPUs could not be listed at all (``gpu_source`` says why)."""

    numa_nodes: list[int]
    cpu_nodes: list[int]
    gpus: list[Gpu] | None
    gpu_source: str
    numactl: str | None
    node_cpus: dict[int, str] = field(default_factory=dict)

    def gpu(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus or [] if g.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def numa_nodes(root: Path = NODE_ROOT) -> tuple[list[int], list[int], dict[int, str]]:
    """Online NUMA nodes, those with CPUs, and each node's CPU list. A kernel without NUMA support: node 0."""
    try:
        online = parse_list((root / "online").read_text())
    except (OSError, ValueError):
        online = sorted(int(p.name[4:]) for p in root.glob("node[0-9]*")) if root.is_dir() else []
    if not online:
        return [0], [0], {0: f"0-{(os.cpu_count() or 1) - 1}"}
    cpus = {}
    for node in online:
        try:
            cpus[node] = (root / f"node{node}" / "cpulist").read_text().strip()
        except OSError:
            cpus[node] = ""
    try:
        with_cpu = parse_list((root / "has_cpu").read_text())
    except (OSError, ValueError):
        with_cpu = [n for n in online if cpus.get(n)]
    return online, [n for n in online if n in with_cpu], cpus


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def list_gpus(python: str | None = None, environ: dict[str, str] | None = None) -> tuple[list[Gpu] | None, str]:
    """GPUs as the runs will see them, and where the list came from."""
    environ = dict(os.environ if environ is None else environ)
    rows: list[Gpu] = []
    source = "nvidia-smi"
    done = _run(["nvidia-smi", "--query-gpu=index,name,pci.bus_id,uuid", "--format=csv,noheader"]) \
        if shutil.which("nvidia-smi") else None
    if done is not None and done.returncode == 0:
        for line in done.stdout.splitlines():
            cells = [c.strip() for c in line.split(",")]
            if len(cells) >= 4 and cells[0].isdigit():
                rows.append(Gpu(int(cells[0]), cells[1], sysfs_bus_id(cells[2]), cells[3],
                                gpu_numa_node(cells[2])))
    else:
        # No nvidia-smi: ask torch how many devices CUDA shows (slow, so only here).
        code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
        done = _run([python or sys.executable, "-c", code], timeout=120)
        if done is None or done.returncode != 0:
            why = "nvidia-smi not found" if not shutil.which("nvidia-smi") else "nvidia-smi failed"
            return None, f"none ({why}, and torch could not be asked)"
        count = int(done.stdout.strip().splitlines()[-1] or 0)
        return [Gpu(i) for i in range(count)], "torch"
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        chosen = []
        for position, item in enumerate(v.strip() for v in visible.split(",") if v.strip()):
            match = next((g for g in rows if str(g.index) == item or (g.uuid and g.uuid.startswith(item))), None)
            if match is None:
                break  # CUDA stops at the first invalid entry
            chosen.append(Gpu(position, match.name, match.bus_id, match.uuid, match.numa_node))
        return chosen, f"nvidia-smi, CUDA_VISIBLE_DEVICES={visible}"
    return rows, source


def detect(device: str, python: str | None = None) -> Machine:
    """The machine as the runner needs it. GPUs are listed only for GPU runs (``device == "cuda"``)."""
    nodes, cpu_nodes, cpus = numa_nodes()
    gpus: list[Gpu] | None
    if device == "cuda":
        gpus, source = list_gpus(python)
    else:
        gpus, source = [], "CPU mode (no GPU used)"
    return Machine(nodes, cpu_nodes, gpus, source, shutil.which("numactl"), cpus)
