"""The two ways vit_pipeline.py runs a ViT: a numpy stand-in (CPU mode without torch: the same shapes and
operations) and torch (CUDA, or the CPU with ``--backend torch``). Each makes the raw batches and runs the four
stages' work; vit_pipeline.Pipeline wraps them in NVTX ranges."""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from workload_host import SetupError

if TYPE_CHECKING:
    from vit_pipeline import Config

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: Distinct raw image batches made up front and cycled through (image decoding is not what is studied).
RAW_POOL = 4


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
