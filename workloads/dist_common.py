"""What the distributed workloads (``ddp_train.py``, ``partition.py``) share: options, the process group, NVTX
ranges counted per rank, and the sidecar and ``--expect`` file that rank 0 writes for the whole report.

Each workload runs under torchrun (``python -m torch.distributed.run --standalone --nproc_per_node N ...``), one
process per rank; alone (no ``RANK`` in the environment) it runs as a world of one. On GPUs rank ``r`` uses CUDA
device ``--gpus[LOCAL_RANK]`` (default: ``LOCAL_RANK``) and NCCL; on the CPU gloo. NVTX ranges come from
``torch.cuda.nvtx`` on GPUs and the ``nvtx`` package on the CPU, chosen as ``vit_pipeline.py`` chooses them.

One report holds every rank's process, so rank 0 gathers each rank's part (pid, device, binding, step times,
the NVTX ranges it pushed) and writes one sidecar ``--out-meta`` and one ``--expect`` (range counts per rank and
pid, which tests compare with what nsys captured).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import socket
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workload_host import Nvtx, SetupError, binding, cuda_device_info, write_json_atomic

PRECISIONS = ("fp32", "fp16", "bf16")
#: Set by numa_bind.py before it execs the rank: the node the rank was bound to (recorded per rank).
BOUND_NODE_ENV = "NSYSAN_BOUND_NUMA_NODE"


class UsageError(ValueError):
    """A setting that cannot work whatever the machine (exit 2, one line)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option gives one line ``<prog>: error: ...`` (and exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


@dataclasses.dataclass
class CommonConfig:
    """Settings every distributed workload has (its own dataclass adds the model's)."""

    precision: str = "bf16"
    device: str = "cuda"              # cuda | cpu
    gpus: str | None = None           # CUDA device per local rank, "0,1"; default: the local rank
    backend: str = "auto"             # auto (nccl on cuda, gloo on cpu) | nccl | gloo
    nvtx: str = "auto"                # auto | nvtx | torch | none
    seed: int = 0
    numa_binding: bool = False        # metadata: the runner binds each rank (numa_bind.py) when true
    variant: str | None = None        # metadata only

    @property
    def dist_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.device == "cuda" else "gloo"

    @property
    def gpu_list(self) -> list[int] | None:
        if self.gpus is None:
            return None
        try:
            found = [int(part) for part in self.gpus.split(",") if part.strip()]
        except ValueError:
            raise UsageError(f"--gpus {self.gpus!r}: expected CUDA device indexes such as 0,1") from None
        if not found or min(found) < 0:
            raise UsageError(f"--gpus {self.gpus!r}: expected CUDA device indexes such as 0,1")
        return found

    def validate_common(self) -> None:
        choices = {"precision": PRECISIONS, "device": ("cuda", "cpu"), "backend": ("auto", "nccl", "gloo"),
                   "nvtx": ("auto", "nvtx", "torch", "none")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UsageError(f"--{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if self.dist_backend == "nccl" and self.device != "cuda":
            raise UsageError("--backend nccl needs --device cuda")
        if self.device == "cpu" and self.gpus is not None:
            raise UsageError("--gpus needs --device cuda")
        self.gpu_list  # noqa: B018 - raises on a malformed list


def parse_config(cls: type, prog: str, description: str, argv: list[str] | None) -> tuple[Any, str | None, str | None]:
    """Options from the dataclass ``cls`` (``--batch-size`` for ``batch_size``, ``--numa-binding/--no-...`` for
    booleans); returns (config, --out-meta, --expect)."""
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    types = {"int": int, "str": str, "float": float, "int | None": int, "str | None": str}
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=types[field.type], default=field.default)
    parser.add_argument("--out-meta", help="write the run's metadata sidecar (JSON) here (rank 0)")
    parser.add_argument("--expect", help="write the NVTX range counts of every rank (JSON) here (rank 0)")
    args = vars(parser.parse_args(argv))
    out_meta, expect = args.pop("out_meta"), args.pop("expect")
    return cls(**args), out_meta, expect


# -- NVTX, counted ------------------------------------------------------------------------------------------------

class CountingNvtx:
    """NVTX push/pop ranges (as workload_host's :class:`Nvtx`), counted by name: what this rank says it emitted."""

    def __init__(self, choice: str, device: str) -> None:
        self.nvtx = Nvtx(choice, device)
        self.backend = self.nvtx.backend
        self.counts: Counter[str] = Counter()

    @contextmanager
    def range(self, name: str) -> Iterator[None]:
        if self.backend != "none":
            self.counts[name] += 1
        with self.nvtx.range(name):
            yield


# -- the process group --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Rank:
    rank: int
    local_rank: int
    world_size: int
    device: Any                       # torch.device
    gpu: int | None                   # the CUDA device index (None on the CPU)
    meta_group: Any = None            # gloo group for metadata (None: the default group is gloo already)

    @property
    def cuda(self) -> bool:
        return self.gpu is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cfg: CommonConfig) -> Rank:
    """Join the process group (torchrun's environment, or a world of one) and pick this rank's device."""
    import torch
    import torch.distributed as dist

    if "RANK" in os.environ:
        rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        init: dict[str, Any] = {}
    else:
        rank, local_rank, world = 0, 0, 1
        init = {"init_method": f"tcp://127.0.0.1:{_free_port()}", "rank": 0, "world_size": 1}
    gpu = None
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise SetupError("--device cuda: torch sees no CUDA device (CPU build of torch, or no GPU/driver)")
        gpus = cfg.gpu_list
        if gpus is not None and local_rank >= len(gpus):
            raise UsageError(f"--gpus {cfg.gpus}: no device for local rank {local_rank} "
                             f"({os.environ.get('LOCAL_WORLD_SIZE', '?')} ranks per node)")
        gpu = gpus[local_rank] if gpus is not None else local_rank
        if gpu >= torch.cuda.device_count():
            raise SetupError(f"local rank {local_rank}: CUDA device {gpu} does not exist "
                             f"(torch sees {torch.cuda.device_count()})")
        torch.cuda.set_device(gpu)
    device = torch.device(f"cuda:{gpu}" if gpu is not None else "cpu")
    backend = cfg.dist_backend
    if backend == "nccl" and not dist.is_nccl_available():
        raise SetupError("--backend nccl: this torch build has no NCCL")
    # device_id makes NCCL create its communicator now, not inside the first measured collective.
    if backend == "nccl":
        init["device_id"] = device
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10), **init)
    # Metadata goes over gloo so that gathering it adds no NCCL kernels to the capture.
    meta_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    torch.manual_seed(cfg.seed)
    return Rank(rank, local_rank, world, device, gpu, meta_group)


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def synchronize(rank: Rank) -> None:
    """Wait for this rank's GPU work (a no-op on the CPU): ends a step or batch range on its GPU time."""
    if rank.cuda:
        import torch

        torch.cuda.synchronize(rank.device)


# -- metadata -----------------------------------------------------------------------------------------------------

Times = list[tuple[str, float, float]]   # (tag, start, end) per step or batch, time.monotonic() seconds


def timing(times: Times, measured_tag: str) -> dict[str, Any]:
    """A rank's measured window and per-iteration times (monotonic clock: one clock for every process of a host)."""
    measured = [t for t in times if t[0] == measured_tag]
    ms = [1e3 * (end - start) for _, start, end in measured]
    return {"warmup": len(times) - len(measured), "measured": len(measured),
            "first_start": measured[0][1] if measured else None, "last_end": measured[-1][2] if measured else None,
            "ms_mean": statistics.fmean(ms) if ms else None, "ms_p50": statistics.median(ms) if ms else None}


def rank_record(rank: Rank, nvtx: CountingNvtx, times: Times, measured_tag: str,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """This rank's part of the sidecar."""
    info: dict[str, Any] = {"device": "cpu"}
    if rank.cuda:
        import torch

        info = cuda_device_info(torch, rank.device, rank.gpu)
    bound = os.environ.get(BOUND_NODE_ENV)
    return {"rank": rank.rank, "local_rank": rank.local_rank, "pid": os.getpid(), "hostname": platform.node(),
            "device": str(rank.device), "gpu_info": info, "binding": binding(),
            "bound_numa_node": int(bound) if bound not in (None, "") else None,
            "timing": timing(times, measured_tag), "nvtx_ranges": dict(nvtx.counts), **(extra or {})}


def gather(rank: Rank, record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every rank's record on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * rank.world_size if rank.rank == 0 else None
    dist.gather_object(record, out, dst=0, group=rank.meta_group)
    return out


def window(ranks: list[dict[str, Any]]) -> float | None:
    """Seconds from the first measured iteration's start on any rank to the last one's end on any rank."""
    starts = [r["timing"]["first_start"] for r in ranks if r["timing"]["first_start"] is not None]
    ends = [r["timing"]["last_end"] for r in ranks if r["timing"]["last_end"] is not None]
    if not starts or not ends:
        return None
    return max(ends) - min(starts)


def versions(nvtx: CountingNvtx) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "nccl": None, "nvtx_backend": nvtx.backend, "nvtx": None}
    try:
        from importlib.metadata import version

        out["nvtx"] = version("nvtx")
    except Exception:
        pass
    if torch.cuda.is_available():
        try:
            out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:
            pass
        # fp32 speed depends on whether convolutions and matmuls may use TF32: record what was in force.
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        out["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return out


def write_outputs(flat: dict[str, Any], cfg: Any, ranks: list[dict[str, Any]], measured: dict[str, Any],
                  nvtx: CountingNvtx, started: str, out_meta: str | None, expect: str | None) -> dict[str, Any]:
    """Rank 0: the sidecar (flat metadata keys first, then nested objects) and the ``--expect`` counts."""
    meta = {**flat,
            "config": dataclasses.asdict(cfg),
            "measured": {**measured, "started": started,
                         "finished": datetime.datetime.now().astimezone().isoformat()},
            "ranks": ranks,
            "launcher": {k: os.environ.get(k) for k in ("LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
                                                         "MASTER_PORT", "OMP_NUM_THREADS")},
            "versions": versions(nvtx),
            "host": {"hostname": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform()}}
    if out_meta:
        write_json_atomic(Path(out_meta), meta)
    if expect:
        write_json_atomic(Path(expect), {
            "world_size": flat["world_size"], "nvtx_backend": nvtx.backend,
            "ranks": [{"rank": r["rank"], "pid": r["pid"], "ranges": r["nvtx_ranges"]} for r in ranks]})
    return meta

