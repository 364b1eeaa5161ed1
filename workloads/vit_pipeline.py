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
import json
import math
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = re.compile(r"^vit(\d+)x(\d+)x(\d+)$")
STAGES = ("preprocess", "h2d", "forward", "d2h")
PRECISIONS = ("bf16", "fp16", "fp32")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
PIPELINES = ("sync", "async", "streams")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: Distinct raw image batches made up front and cycled through (image decoding is not what is studied).
RAW_POOL = 4


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


# -- numpy stand-in (CPU mode without torch) -------------------------------------------------------------------

class NumpyModel:
    """The ViT forward pass in float32 numpy (random weights): same shapes and operations as the torch model."""

    def __init__(self, cfg: Config, rng: np.random.Generator) -> None:
        self.cfg = cfg
        if cfg.noop:
            return
        d, p, m = cfg.dim, cfg.patch, cfg.dim * cfg.mlp_ratio
        n = (cfg.resolution // p) ** 2 + 1

        def w(*shape: int) -> np.ndarray:
            return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

        self.embed_w, self.embed_b = w(3 * p * p, d), np.zeros(d, np.float32)
        self.cls, self.pos = w(1, 1, d), w(1, n, d)
        self.blocks = [dict(qkv=w(d, 3 * d), proj=w(d, d), fc1=w(d, m), fc2=w(m, d)) for _ in range(cfg.depth)]
        self.head = w(d, cfg.num_classes)

    @staticmethod
    def _norm(x: np.ndarray) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        cfg = self.cfg
        if cfg.noop:
            return (x,)
        b, p, g, d, h = x.shape[0], cfg.patch, cfg.resolution // cfg.patch, cfg.dim, cfg.n_heads
        patches = x.reshape(b, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * g * g, 3 * p * p)
        t = (patches @ self.embed_w + self.embed_b).reshape(b, g * g, d)
        t = np.concatenate([np.broadcast_to(self.cls, (b, 1, d)), t], axis=1) + self.pos
        n = t.shape[1]
        t = t.reshape(b * n, d)  # tokens as rows: 2-D matrix products are several times faster in numpy
        for blk in self.blocks:
            qkv = (self._norm(t) @ blk["qkv"]).reshape(b, n, 3, h, d // h).transpose(2, 0, 3, 1, 4)
            scores = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * np.float32(1 / math.sqrt(d // h))
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ qkv[2]
            t = t + attn.transpose(0, 2, 1, 3).reshape(b * n, d) @ blk["proj"]
            u = self._norm(t) @ blk["fc1"]
            u = 0.5 * u * (1 + np.tanh(np.float32(0.7978845608) * (u + np.float32(0.044715) * u * u * u)))
            t = t + u @ blk["fc2"]
        t = self._norm(t).reshape(b, n, d)
        return t[:, 0] @ self.head, t


class NumpyBackend:
    """CPU mode: "device" buffers are plain arrays; h2d/d2h are host copies, so the stages keep their order."""

    name = "numpy"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.model = NumpyModel(cfg, self.rng)
        r = cfg.resolution
        self.raw_pool = [self.rng.integers(0, 256, (cfg.batch_size, r, r, 3), dtype=np.uint8) for _ in range(
            min(RAW_POOL, cfg.total_batches))]
        self.dtype = np.float32  # numpy has no bf16: the stand-in computes in fp32 (recorded in the sidecar)

    def raw(self, index: int) -> np.ndarray:
        return self.raw_pool[index % len(self.raw_pool)]

    @staticmethod
    def normalize(raw: np.ndarray) -> np.ndarray:
        x = raw.astype(np.float32) * np.float32(1 / 255)
        x -= MEAN
        x /= STD
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def preprocess_host(self, raw: np.ndarray, slot: int) -> np.ndarray:
        return self.normalize(raw)

    def h2d(self, host: np.ndarray, side_stream: bool = False) -> tuple[np.ndarray, None]:
        return host.copy(), None

    def preprocess_device(self, dev_raw: np.ndarray) -> np.ndarray:
        return self.normalize(dev_raw)

    def wait(self, event: Any, dev: Any) -> None:
        pass

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.model(x)

    def d2h(self, out: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        payload = out if self.cfg.d2h == "enhanced" or self.cfg.noop else out[:1]
        return [np.array(t, dtype=np.float32, copy=True) for t in payload]

    def info(self) -> dict[str, Any]:
        return {"precision_effective": "fp32"}


# -- torch (GPU runs; CPU with --backend torch) ------------------------------------------------------------------

def build_torch_model(cfg: Config) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, mlp: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.dim
            self.embed = nn.Conv2d(3, d, cfg.patch, stride=cfg.patch)
            self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, (cfg.resolution // cfg.patch) ** 2 + 1, d) * 0.02)
            self.blocks = nn.ModuleList(Block(d, cfg.n_heads, d * cfg.mlp_ratio) for _ in range(cfg.depth))
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, cfg.num_classes)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            for blk in self.blocks:
                t = blk(t)
            t = self.norm(t)
            return self.head(t[:, 0]), t

    class NoOp(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (x,)

    return NoOp() if cfg.noop else ViT()


class TorchBackend:
    """The pipeline in torch: CUDA (``--device cuda``) or the CPU. Host buffers are a ring of pinned (or pageable)
    tensors, so a copy still in flight is never overwritten."""

    name = "torch"

    def __init__(self, cfg: Config) -> None:
        import torch

        self.torch = torch
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.cuda = cfg.device == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SetupError("--device cuda: torch sees no CUDA device (CPU build of torch, or no GPU/driver)")
        if self.cuda and cfg.gpu >= torch.cuda.device_count():
            raise SetupError(f"--gpu {cfg.gpu}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        self.device = torch.device(f"cuda:{cfg.gpu}" if self.cuda else "cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]
        pinned = self.cuda and cfg.memory == "pinned"
        self.pinned = pinned
        r, b = cfg.resolution, cfg.batch_size
        gen = torch.Generator().manual_seed(cfg.seed)
        self.raw_pool = [torch.randint(0, 256, (b, r, r, 3), dtype=torch.uint8, generator=gen)
                         for _ in range(min(RAW_POOL, cfg.total_batches))]
        if pinned:
            self.raw_pool = [t.pin_memory() for t in self.raw_pool]
        ring = cfg.queue_depth + 2
        self.slots = [torch.empty((b, 3, r, r), dtype=torch.float32, pin_memory=pinned) for _ in range(ring)]
        self.slot_events: list[Any] = [None] * ring
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)
        self.mean_dev, self.std_dev = self.mean.to(self.device), self.std.to(self.device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda and cfg.pipeline == "streams" else None
        self.out_bufs: dict[tuple, Any] = {}
        model = build_torch_model(cfg).to(self.device, self.dtype).eval()
        if cfg.compile != "none":
            model = torch.compile(model, mode=cfg.compile)
        self.model = model

    def raw(self, index: int) -> Any:
        return self.raw_pool[index % len(self.raw_pool)]

    def preprocess_host(self, raw: Any, slot: int) -> Any:
        if self.slot_events[slot] is not None:  # the copy that last read this slot must have finished
            self.slot_events[slot].synchronize()
        x = self.slots[slot]
        x.copy_(raw.permute(0, 3, 1, 2))
        return x.div_(255).sub_(self.mean).div_(self.std)

    def h2d(self, host: Any, side_stream: bool = False, slot: int | None = None) -> tuple[Any, Any]:
        torch = self.torch
        stream = self.copy_stream if side_stream and self.copy_stream is not None else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            dev = host.to(self.device, non_blocking=self.pinned)
            if dev.dtype != torch.uint8:
                dev = dev.to(self.dtype)
            event = None
            if self.cuda:
                event = torch.cuda.Event()
                event.record()
                if slot is not None:
                    self.slot_events[slot] = event
        return dev, event if stream is not None else None

    def wait(self, event: Any, dev: Any) -> None:
        if event is not None:
            current = self.torch.cuda.current_stream(self.device)
            current.wait_event(event)
            dev.record_stream(current)

    def preprocess_device(self, dev_raw: Any) -> Any:
        x = dev_raw.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean_dev).div_(self.std_dev)
        return x.to(self.dtype)

    def forward(self, x: Any) -> tuple[Any, ...]:
        with self.torch.inference_mode():
            return self.model(x)

    def d2h(self, out: tuple[Any, ...]) -> list[Any]:
        payload = out if self.cfg.d2h == "enhanced" or self.cfg.noop else out[:1]
        host = []
        for i, t in enumerate(payload):
            t = t.float()
            if self.pinned:
                key = (i, tuple(t.shape))
                if key not in self.out_bufs:
                    self.out_bufs[key] = self.torch.empty(t.shape, dtype=self.torch.float32, pin_memory=True)
                host.append(self.out_bufs[key].copy_(t, non_blocking=True))
            else:
                host.append(t.to("cpu"))
        if self.cuda:
            self.torch.cuda.current_stream(self.device).synchronize()
        return host

    def info(self) -> dict[str, Any]:
        return {"precision_effective": self.cfg.precision}


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


# -- metadata ------------------------------------------------------------------------------------------------------

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


def _nvidia_smi(*query: str) -> list[list[str]]:
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


def gpu_info(backend: Any) -> dict[str, Any] | None:
    if not isinstance(backend, TorchBackend) or not backend.cuda:
        return None
    return cuda_device_info(backend.torch, backend.device, backend.cfg.gpu)


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
    for row in _nvidia_smi("pci.bus_id", "uuid", "driver_version"):
        if len(row) == 3 and ((bus and sysfs_bus_id(row[0]) == bus) or (uuid and row[1].endswith(uuid))):
            info["bus_id"] = bus or sysfs_bus_id(row[0])
            info["driver"] = row[2]
    info["numa_node"] = numa_node_of(info["bus_id"]) if info["bus_id"] else None
    return info


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
    rows = _nvidia_smi("driver_version")
    if rows:
        out["driver"] = rows[0][0]
    return out


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


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
