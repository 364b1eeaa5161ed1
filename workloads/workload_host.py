"""What every workload records about the machine it runs on, and how it emits NVTX ranges: the CPU and memory
binding in effect, the CUDA device and its NUMA node, atomic sidecar writes. Shared by vit_pipeline.py and the
distributed workloads (dist_common.py); stdlib only, torch and nvtx are imported when a run asks for them."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class SetupError(Exception):
    """The run cannot start as configured here (no CUDA device, no NVTX library asked for, ...)."""


# -- NVTX -----------------------------------------------------------------------------------------------------

class Nvtx:
    """Push/pop NVTX ranges through ``torch.cuda.nvtx`` (GPU runs) or the ``nvtx`` package (CPU runs).

    Ranges are per thread, as NVTX's push/pop stack is. ``backend`` says which one is used ("none": no ranges)."""

    def __init__(self, choice: str, device: str) -> None:
        self.backend = "none"
        self.push: Callable[[str], Any] = lambda name: None
        self.pop: Callable[[], Any] = lambda: None
        order = {"auto": ("torch", "nvtx") if device == "cuda" else ("nvtx", "torch"), "none": ()}.get(choice, (choice,))
        for candidate in order:
            if candidate == "nvtx":
                try:
                    import nvtx
                except ImportError:
                    continue
                self.push, self.pop, self.backend = (lambda name: nvtx.push_range(name)), nvtx.pop_range, "nvtx"
                break
            if candidate == "torch":
                try:
                    import torch
                except ImportError:
                    continue
                if not torch.cuda.is_available():  # CPU builds of torch have no NVTX
                    continue
                self.push, self.pop, self.backend = torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop, "torch"
                break
        if choice != "none" and self.backend == "none":
            # A capture without ranges cannot be analysed: better no run than a run that looks fine.
            raise SetupError(f"--nvtx {choice}: no NVTX library here: install the nvtx package (pip install "
                             "'nvtx<0.2.12') or use a CUDA build of torch; --nvtx none runs without ranges")
        if self.backend == "nvtx" and device == "cpu":
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                if tuple(int(x) for x in version("nvtx").split(".")[:3]) >= (0, 2, 12):
                    print(f"{Path(sys.argv[0]).stem or 'vit_pipeline'}: warning: nvtx >= 0.2.12: nsys 2022.4/2023.4 "
                          "drop its ranges (use nvtx<0.2.12)", file=sys.stderr)

    @contextlib.contextmanager
    def range(self, name: str) -> Iterator[None]:
        self.push(name)
        try:
            yield
        finally:
            self.pop()


# -- where the run is bound, which GPU it has ------------------------------------------------------------------------------------------------------

def parse_cpu_list(text: str) -> list[int]:
    """``0-3,8,10-11`` -> [0, 1, 2, 3, 8, 10, 11] (the kernel's list format, as in Cpus_allowed_list)."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def binding(status_path: str = "/proc/self/status") -> dict[str, Any]:
    """The CPUs and memory nodes this process may use, as the kernel says (numactl's binding, if any)."""
    fields = {}
    try:
        for line in Path(status_path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Cpus_allowed_list", "Mems_allowed_list"):
                fields[key] = value.strip()
    except OSError:
        pass
    cpus, mems = fields.get("Cpus_allowed_list"), fields.get("Mems_allowed_list")
    return {"cpus_allowed_list": cpus, "mems_allowed_list": mems,
            "cpus": parse_cpu_list(cpus) if cpus else None, "mems": parse_cpu_list(mems) if mems else None}


def nvidia_smi(*query: str) -> list[list[str]]:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode:
        return []
    return [[c.strip() for c in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def sysfs_bus_id(bus_id: str) -> str:
    """nvidia-smi's ``00000000:1B:00.0`` -> sysfs's ``0000:1b:00.0``."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}" if rest else bus_id.lower()


def numa_node_of(bus_id: str, root: str = "/sys/bus/pci/devices") -> int | None:
    """The NUMA node sysfs gives the PCI device (None when unknown: missing, or -1 as in most VMs)."""
    try:
        node = int(Path(root, sysfs_bus_id(bus_id), "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def cuda_device_info(torch: Any, device: Any, index: int) -> dict[str, Any]:
    """Name, PCI bus id, UUID, memory, capability, driver and NUMA node of one CUDA device (torch's ``device``,
    recorded as ``index``); the distributed workloads record one per rank."""
    props = torch.cuda.get_device_properties(device)
    bus = None
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        bus = f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    uuid = str(getattr(props, "uuid", "") or "") or None
    info = {"index": index, "name": props.name, "bus_id": bus, "uuid": uuid,
            "memory_mib": props.total_memory // 2**20, "capability": f"{props.major}.{props.minor}", "driver": None}
    # nvidia-smi adds the driver, and the bus id where torch does not give it: matched by bus id or UUID
    # (nvidia-smi's and CUDA's device numbering may differ).
    for row in nvidia_smi("pci.bus_id", "uuid", "driver_version"):
        if len(row) == 3 and ((bus and sysfs_bus_id(row[0]) == bus) or (uuid and row[1].endswith(uuid))):
            info["bus_id"] = bus or sysfs_bus_id(row[0])
            info["driver"] = row[2]
    info["numa_node"] = numa_node_of(info["bus_id"]) if info["bus_id"] else None
    return info


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)
