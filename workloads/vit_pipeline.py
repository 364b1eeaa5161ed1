"""A ViT inference pipeline with NVTX ranges per batch and per stage, for profiling under nsys.

Per batch: ``preprocess`` (uint8 images -> normalized float, on the CPU or the GPU), ``h2d`` (host to device copy,
pinned or pageable host memory), ``forward`` (a ViT: patch embedding, ``depth`` pre-norm transformer blocks of
width ``dim``, classifier head) and ``d2h`` (logits, or with ``--d2h enhanced`` logits and every token, back to
the host as fp32; the stage ends when the copy is complete). Each batch is wrapped in an outer range
``warmup_<i>`` (the first ``--warmup-batches``) or ``batch_<i>``, ``i`` counting from 0 over all batches.
``vit0x0x0`` is a no-op model: the input is sent back unchanged (a pure transfer baseline).

Pipeline modes: ``sync`` (every stage on the main thread, in order); ``async`` (a prefetch thread runs the CPU
preprocessing up to ``--queue-depth`` batches ahead, in ranges ``prefetch_<i>`` / ``warmup_prefetch_<i>``);
``streams`` (the prefetch thread also issues the host-to-device copy on its own CUDA stream, so the next batch's
copy overlaps the current batch's compute).

``--device cpu`` needs no GPU and no torch: the same stages, run by a numpy stand-in of the model (``h2d`` and
``d2h`` are host memory copies), with NVTX ranges from the ``nvtx`` package; nsys then traces NVTX only.
With torch installed, ``--backend torch --device cpu`` runs the torch model on the CPU instead.

At the end the workload writes ``--out-meta`` (the runner's sidecar ``<report>.meta.json``): the run's metadata
keys (``model``, ``gpu``, ``numa``, ``variant``, ``batch_size``, ``gpu_numa_node``, ``samples_per_s``), the full
configuration, the CPU/memory binding in effect, the GPU and the software versions. docs/workloads.md has it all.

Run:  python workloads/vit_pipeline.py --patch 32 --depth 2 --dim 128 --device cpu --out-meta run.meta.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import platform
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, also when imported

from vit_backends import NumpyBackend, TorchBackend  # noqa: E402
from workload_host import Nvtx, SetupError, binding, cuda_device_info, nvidia_smi, write_json_atomic  # noqa: E402

MODEL_NAME = re.compile(r"^vit(\d+)x(\d+)x(\d+)$")
STAGES = ("preprocess", "h2d", "forward", "d2h")
PRECISIONS = ("bf16", "fp16", "fp32")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
PIPELINES = ("sync", "async", "streams")


@dataclasses.dataclass
class Config:
    """Everything that defines a run (written whole into the sidecar's ``config``)."""

    patch: int = 32
    depth: int = 2
    dim: int = 128
    heads: int | None = None          # default: dim // 64 (at least 1)
    mlp_ratio: int = 4
    num_classes: int = 1000
    resolution: int = 224
    batch_size: int = 10
    num_samples: int = 100            # measured samples; rounded up to whole batches
    warmup_batches: int = 5
    precision: str = "bf16"
    compile: str = "none"
    memory: str = "pinned"            # pinned | pageable host buffers
    pipeline: str = "sync"
    queue_depth: int = 2
    preprocess: str = "cpu"           # cpu | gpu
    d2h: str = "logits"               # logits | enhanced (logits and every token)
    device: str = "cuda"              # cuda | cpu
    gpu: int = 0                      # CUDA device index (a label in CPU mode)
    backend: str = "auto"             # auto (torch on cuda, numpy on cpu) | torch | numpy
    nvtx: str = "auto"                # auto | nvtx (package) | torch (torch.cuda.nvtx) | none
    seed: int = 0
    numa: int | None = None           # the NUMA node the runner bound the run to (metadata only)
    variant: str | None = None        # metadata only

    @property
    def model(self) -> str:
        return f"vit{self.patch}x{self.depth}x{self.dim}"

    @property
    def noop(self) -> bool:
        return self.patch == self.depth == self.dim == 0

    @property
    def n_heads(self) -> int:
        return self.heads or max(1, self.dim // 64)

    @property
    def measured_batches(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def total_batches(self) -> int:
        return self.warmup_batches + self.measured_batches

    @property
    def chosen_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "torch" if self.device == "cuda" else "numpy"

    def validate(self) -> None:
        """Raise ValueError naming the first problem."""
        choices = {"precision": PRECISIONS, "compile": COMPILE_MODES, "memory": ("pinned", "pageable"),
                   "pipeline": PIPELINES, "preprocess": ("cpu", "gpu"), "d2h": ("logits", "enhanced"),
                   "device": ("cuda", "cpu"), "backend": ("auto", "torch", "numpy"),
                   "nvtx": ("auto", "nvtx", "torch", "none")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, key)!r}")
        for key in ("batch_size", "num_samples", "queue_depth", "resolution"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be at least 1")
        if self.warmup_batches < 0 or min(self.patch, self.depth, self.dim) < 0:
            raise ValueError("--warmup-batches, --patch, --depth and --dim must not be negative")
        if not self.noop:
            if self.patch == 0 or self.dim == 0:
                raise ValueError(f"{self.model}: patch and dim must be positive (vit0x0x0 is the only no-op model)")
            if self.resolution % self.patch:
                raise ValueError(f"{self.model}: resolution {self.resolution} is not a multiple of patch {self.patch}")
            if self.dim % self.n_heads:
                raise ValueError(f"{self.model}: dim {self.dim} is not divisible by {self.n_heads} heads")
        if self.device == "cuda" and self.chosen_backend == "numpy":
            raise ValueError("the numpy backend runs on --device cpu only")
        if self.compile != "none" and self.chosen_backend != "torch":
            raise ValueError("--compile needs the torch backend")


# -- the pipeline ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Prepared:
    index: int
    data: Any              # host tensor (sync/async) or device tensor (streams)
    on_device: bool
    event: Any = None
    slot: int = 0


class Pipeline:
    def __init__(self, cfg: Config, backend: Any, nvtx: Nvtx) -> None:
        self.cfg, self.backend, self.nvtx = cfg, backend, nvtx
        self.ring = cfg.queue_depth + 2

    def tag(self, index: int) -> str:
        return "warmup" if index < self.cfg.warmup_batches else "batch"

    def prepare(self, index: int, with_copy: bool) -> Prepared:
        """The host-side part of a batch: CPU preprocessing (or the raw images), and with ``with_copy`` the copy."""
        cfg, be = self.cfg, self.backend
        slot = index % self.ring
        if cfg.preprocess == "cpu":
            with self.nvtx.range("preprocess"):
                data = be.preprocess_host(be.raw(index), slot)
        else:
            data = be.raw(index)
        if not with_copy:
            return Prepared(index, data, False, slot=slot)
        with self.nvtx.range("h2d"):
            dev, event = self._copy(data, slot, side_stream=True)
        return Prepared(index, dev, True, event, slot)

    def _copy(self, data: Any, slot: int, side_stream: bool) -> tuple[Any, Any]:
        if isinstance(self.backend, TorchBackend):
            return self.backend.h2d(data, side_stream=side_stream, slot=slot if self.cfg.preprocess == "cpu" else None)
        return self.backend.h2d(data)

    def finish(self, item: Prepared) -> None:
        """The device-side part of a batch: copy (unless done), GPU preprocessing, forward, copy back."""
        be = self.backend
        if item.on_device:
            dev = item.data
            be.wait(item.event, dev)
        else:
            with self.nvtx.range("h2d"):
                dev, _ = self._copy(item.data, item.slot, side_stream=False)
        if self.cfg.preprocess == "gpu":
            with self.nvtx.range("preprocess"):
                dev = be.preprocess_device(dev)
        with self.nvtx.range("forward"):
            out = be.forward(dev)
        with self.nvtx.range("d2h"):
            be.d2h(out)

    def producer(self, out: queue.Queue, stop: threading.Event) -> None:
        with_copy = self.cfg.pipeline == "streams"
        try:
            for i in range(self.cfg.total_batches):
                if stop.is_set():
                    return
                with self.nvtx.range(f"{'warmup_' if i < self.cfg.warmup_batches else ''}prefetch_{i}"):
                    item = self.prepare(i, with_copy)
                out.put(item)
        except BaseException as e:  # handed to the main thread, which raises it
            out.put(e)

    def run(self) -> list[tuple[str, float, float]]:
        """Run every batch; return (tag, start, end) per batch (perf_counter seconds)."""
        cfg = self.cfg
        times = []
        stop = threading.Event()
        items: queue.Queue = queue.Queue(maxsize=cfg.queue_depth)
        thread = None
        if cfg.pipeline != "sync":
            thread = threading.Thread(target=self.producer, args=(items, stop), name="prefetch", daemon=True)
            thread.start()
        try:
            for i in range(cfg.total_batches):
                tag = self.tag(i)
                start = time.perf_counter()
                with self.nvtx.range(f"{tag}_{i}"):
                    if thread is None:
                        item = self.prepare(i, with_copy=False)
                    else:
                        item = items.get()
                        if isinstance(item, BaseException):
                            raise item
                    self.finish(item)
                times.append((tag, start, time.perf_counter()))
        finally:
            stop.set()
            if thread is not None:
                while thread.is_alive():  # unblock a producer waiting on a full queue
                    with contextlib.suppress(queue.Empty):
                        items.get(timeout=0.05)
                thread.join()
        return times


def gpu_info(backend: Any) -> dict[str, Any] | None:
    if not isinstance(backend, TorchBackend) or not backend.cuda:
        return None
    return cuda_device_info(backend.torch, backend.device, backend.cfg.gpu)


def versions(backend: Any, nvtx: Nvtx) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__, "torch": None,
                           "cuda": None, "cudnn": None, "driver": None, "nvtx_backend": nvtx.backend, "nvtx": None}
    try:
        from importlib.metadata import version
        out["nvtx"] = version("nvtx")
    except Exception:
        pass
    if isinstance(backend, TorchBackend):
        torch = backend.torch
        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if backend.cuda else None
    rows = nvidia_smi("driver_version")
    if rows:
        out["driver"] = rows[0][0]
    return out


def sidecar(cfg: Config, backend: Any, nvtx: Nvtx, times: list[tuple[str, float, float]],
            started: str) -> dict[str, Any]:
    measured = [t for t in times if t[0] == "batch"]
    seconds = measured[-1][2] - measured[0][1] if measured else 0.0
    samples = len(measured) * cfg.batch_size
    batch_ms = [1e3 * (end - start) for _, start, end in measured]
    gpu = gpu_info(backend)
    return {
        # Top-level scalars are nsysan's metadata keys (--by, NUMA pairing): keep them few and stable.
        "model": cfg.model, "gpu": cfg.gpu, "numa": cfg.numa, "variant": cfg.variant, "batch_size": cfg.batch_size,
        "gpu_numa_node": gpu["numa_node"] if gpu else None,
        "samples_per_s": round(samples / seconds, 3) if seconds > 0 else None,
        "config": {**dataclasses.asdict(cfg), "model": cfg.model, "heads": cfg.n_heads,
                   "backend": backend.name, **backend.info()},
        "measured": {"batches": len(measured), "samples": samples, "seconds": seconds,
                     "warmup_batches": cfg.warmup_batches,
                     "batch_ms_mean": float(np.mean(batch_ms)) if batch_ms else None,
                     "batch_ms_p50": float(np.median(batch_ms)) if batch_ms else None,
                     "started": started, "finished": datetime.datetime.now().astimezone().isoformat()},
        "binding": binding(),
        "gpu_info": gpu or {"device": cfg.device},  # an object, never null: a null would become a metadata key
        "versions": versions(backend, nvtx),
        "host": {"hostname": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
    }


# -- command line --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> tuple[Config, str | None]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = Config()
    p.add_argument("--model", help="vit{P}x{D}x{H}: sets --patch, --depth and --dim at once")
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(d, field.name)
        if field.name in ("heads", "numa"):
            p.add_argument(flag, type=int, default=default)
        elif field.name == "variant":
            p.add_argument(flag, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--out-meta", help="write the run's metadata sidecar (JSON) here")
    args = vars(p.parse_args(argv))
    out_meta = args.pop("out_meta")
    model = args.pop("model")
    if model:
        found = MODEL_NAME.match(model)
        if not found:
            p.error(f"--model {model!r}: expected vit{{patch}}x{{depth}}x{{dim}}, e.g. vit32x6x512")
        args.update(patch=int(found[1]), depth=int(found[2]), dim=int(found[3]))
    return Config(**args), out_meta


REPORT_NAME = re.compile(r"^[A-Za-z]+_gpu(\d+)_numa(\d+)_vit\d+x\d+x\d+(?:_(.+))?\.meta\.json$")


def fill_from_name(cfg: Config, out_meta: str | None) -> None:
    """``--numa`` / ``--variant`` not given: take them from a sidecar named like the runner's reports
    (``pipeline_gpu{G}_numa{N}_vit{P}x{D}x{H}[_{variant}].meta.json``), so the sidecar agrees with the name."""
    found = REPORT_NAME.match(Path(out_meta).name) if out_meta else None
    if found:
        if cfg.numa is None:
            cfg.numa = int(found[2])
        if cfg.variant is None:
            cfg.variant = found[3]


def make_backend(cfg: Config) -> Any:
    return TorchBackend(cfg) if cfg.chosen_backend == "torch" else NumpyBackend(cfg)


def run(cfg: Config, out_meta: str | None = None) -> dict[str, Any]:
    """Run the pipeline; return (and write to ``out_meta``) the sidecar."""
    cfg.validate()
    fill_from_name(cfg, out_meta)
    started = datetime.datetime.now().astimezone().isoformat()
    backend = make_backend(cfg)
    nvtx = Nvtx(cfg.nvtx, cfg.device)
    times = Pipeline(cfg, backend, nvtx).run()
    meta = sidecar(cfg, backend, nvtx, times, started)
    if out_meta:
        write_json_atomic(Path(out_meta), meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    cfg, out_meta = parse_args(argv)
    try:
        meta = run(cfg, out_meta)
    except (ValueError, SetupError) as e:
        print(f"vit_pipeline: error: {e}", file=sys.stderr)
        return 2
    print(f"vit_pipeline: {cfg.model} on {cfg.device}: {meta['measured']['batches']} batches of {cfg.batch_size}, "
          f"{meta['samples_per_s']} samples/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
