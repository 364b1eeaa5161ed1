"""DistributedDataParallel training of a ResNet-18 or WideResNet on synthetic CIFAR-100-shaped data, for nsys.

Per step, on each rank's main thread: ``data`` (the next batch from the DataLoader, then to the device), ``forward``
(forward and loss, under autocast for fp16/bf16), ``backward`` (zero_grad and backward: DDP's gradient all-reduce
runs here), ``optimizer`` (the optimizer step, through GradScaler in fp16), all inside ``warmup_<i>`` (the first
``--warmup-steps``) or ``step_<i>``, ``i`` counting from 0 over all steps. On GPUs a step ends with
``torch.cuda.synchronize()`` inside its range, so a step range spans the step's GPU work.

Data: a pool of random 32x32 uint8 images with labels of 100 classes, served by a Dataset whose items are
normalized, padded-and-cropped and flipped per sample (CIFAR's training augmentation) on the DataLoader's
``--workers`` processes (``--prefetch-factor`` batches each ahead; pinned memory on GPUs); a DistributedSampler
gives each rank its own samples.

Run under torchrun (``python -m torch.distributed.run --standalone --nproc_per_node 2 workloads/ddp_train.py
--device cpu --model wrn10-1 --batch-size 8``); alone it is a world of one. Rank 0 writes ``--out-meta`` (the
sidecar: configuration, throughput, every rank's pid, device, binding and NVTX range counts) and ``--expect``.
docs/workloads.md has the options, the ranges and the sidecar.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, also when imported

import dist_common as dc  # noqa: E402
from workload_host import SetupError  # noqa: E402

PROG = "ddp_train"
WRN_NAME = re.compile(r"^wrn(\d+)-(\d+)$")
MODELS = "resnet18 or wrn{depth}-{width} with depth = 6n + 4 (e.g. wrn16-4, wrn28-10)"
#: Distinct synthetic images (cycled): enough that batches differ, small enough to make in a moment.
IMAGE_POOL = 2048
MEAN, STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)   # CIFAR-100's, per channel


@dataclasses.dataclass
class Config(dc.CommonConfig):
    model: str = "resnet18"
    num_classes: int = 100
    image_size: int = 32
    batch_size: int = 256             # per rank
    steps: int = 50                   # measured steps
    warmup_steps: int = 10
    workers: int = 4                  # DataLoader worker processes per rank (0: load on the main thread)
    prefetch_factor: int = 2          # batches each worker loads ahead (only with workers > 0)
    channels_last: bool = True
    lr: float = 0.1

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps

    @property
    def effective_prefetch(self) -> int | None:
        return self.prefetch_factor if self.workers > 0 else None

    def validate(self) -> None:
        self.validate_common()
        if self.model != "resnet18":
            found = WRN_NAME.match(self.model)
            if not found or int(found[1]) < 10 or (int(found[1]) - 4) % 6 or int(found[2]) < 1:
                raise dc.UsageError(f"--model {self.model!r}: expected {MODELS}")
        for key in ("batch_size", "steps", "num_classes", "prefetch_factor", "image_size"):
            if getattr(self, key) < 1:
                raise dc.UsageError(f"--{key.replace('_', '-')} must be at least 1")
        if self.warmup_steps < 0 or self.workers < 0:
            raise dc.UsageError("--warmup-steps and --workers must not be negative")
        if self.image_size < 8:
            raise dc.UsageError("--image-size must be at least 8 (three stride-2 stages)")
        if not self.lr > 0:
            raise dc.UsageError("--lr must be positive")


# -- models ------------------------------------------------------------------------------------------------------

def build_model(cfg: Config) -> Any:
    from torch import nn

    class Basic(nn.Module):
        """ResNet's basic block (post-activation), or WideResNet's (pre-activation) with ``pre``."""

        def __init__(self, cin: int, cout: int, stride: int, pre: bool) -> None:
            super().__init__()
            self.pre = pre
            self.bn1 = nn.BatchNorm2d(cin if pre else cout)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.relu = nn.ReLU(inplace=True)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Conv2d(cin, cout, 1, stride, bias=False)
                self.short_bn = nn.Identity() if pre else nn.BatchNorm2d(cout)

        def forward(self, x: Any) -> Any:
            if self.pre:
                out = self.relu(self.bn1(x))
                skip = x if self.short is None else self.short(out)
                return self.conv2(self.relu(self.bn2(self.conv1(out)))) + skip
            out = self.relu(self.bn1(self.conv1(x)))
            skip = x if self.short is None else self.short_bn(self.short(x))
            return self.relu(self.bn2(self.conv2(out)) + skip)

    def stage(cin: int, cout: int, blocks: int, stride: int, pre: bool) -> list[nn.Module]:
        return [Basic(cin if i == 0 else cout, cout, stride if i == 0 else 1, pre) for i in range(blocks)]

    if cfg.model == "resnet18":  # the CIFAR variant: 3x3 stem, no max-pool
        widths, blocks, pre = (64, 128, 256, 512), (2, 2, 2, 2), False
        stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        tail: list[nn.Module] = []
        cin = 64
    else:
        depth, k = (int(g) for g in WRN_NAME.match(cfg.model).groups())  # type: ignore[union-attr]
        n = (depth - 4) // 6
        widths, blocks, pre = (16 * k, 32 * k, 64 * k), (n, n, n), True
        stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)]
        tail = [nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True)]
        cin = 16
    layers: list[nn.Module] = [*stem]
    for i, (width, count) in enumerate(zip(widths, blocks)):
        layers += stage(cin, width, count, 1 if i == 0 else 2, pre)
        cin = width
    layers += [*tail, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cfg.num_classes)]
    return nn.Sequential(*layers)


# -- data --------------------------------------------------------------------------------------------------------

class SyntheticCifar:
    """CIFAR-shaped samples: random uint8 images (a pool, cycled) with CIFAR's per-sample training transform."""

    def __init__(self, cfg: Config, length: int) -> None:
        import torch

        gen = torch.Generator().manual_seed(cfg.seed)
        size = cfg.image_size
        pool = min(IMAGE_POOL, length)
        self.images = torch.randint(0, 256, (pool, 3, size, size), dtype=torch.uint8, generator=gen)
        self.labels = torch.randint(0, cfg.num_classes, (pool,), generator=gen)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        slot = index % len(self.images)
        x = (self.images[slot].float().div_(255) - self.mean) / self.std
        size = x.shape[-1]
        x = F.pad(x.unsqueeze(0), (4, 4, 4, 4), mode="reflect").squeeze(0)
        dy, dx = (int(v) for v in torch.randint(0, 9, (2,)))
        x = x[:, dy:dy + size, dx:dx + size]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.contiguous(), self.labels[slot]


def make_loader(cfg: Config, rank: dc.Rank) -> Any:
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    # Exactly total_steps batches per rank: one epoch, no partial batch.
    dataset = SyntheticCifar(cfg, cfg.total_steps * cfg.batch_size * rank.world_size)
    sampler = DistributedSampler(dataset, num_replicas=rank.world_size, rank=rank.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      prefetch_factor=cfg.effective_prefetch, persistent_workers=cfg.workers > 0,
                      pin_memory=rank.cuda, drop_last=True)


# -- training ----------------------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: Config, rank: dc.Rank, nvtx: dc.CountingNvtx) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.torch, self.cfg, self.rank, self.nvtx = torch, cfg, rank, nvtx
        if rank.cuda:
            torch.backends.cudnn.benchmark = True  # autotuning happens in the warm-up steps
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(cfg).to(rank.device, memory_format=self.memory_format)
        self.model = DDP(model, device_ids=[rank.gpu] if rank.cuda else None)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.device_type = "cuda" if rank.cuda else "cpu"
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[cfg.precision]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=cfg.precision == "fp16")

    def autocast(self) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, batches: Any) -> Any:
        """One training step's stages; ``data`` holds the wait for the DataLoader (its stalls) and the copy."""
        nvtx = self.nvtx
        with nvtx.range("data"):
            images, labels = next(batches)
            images = images.to(self.rank.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            labels = labels.to(self.rank.device, non_blocking=True)
        with nvtx.range("forward"), self.autocast():
            loss = self.loss_fn(self.model(images), labels)
        with nvtx.range("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with nvtx.range("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss

    def run(self) -> tuple[dc.Times, float]:
        """Every step; returns (tag, start, end) per step and the last step's loss."""
        cfg = self.cfg
        self.model.train()
        batches = iter(make_loader(cfg, self.rank))
        times: dc.Times = []
        loss = None
        for i in range(cfg.total_steps):
            tag = "warmup" if i < cfg.warmup_steps else "step"
            start = time.monotonic()
            with self.nvtx.range(f"{tag}_{i}"):
                loss = self.step(batches)
                dc.synchronize(self.rank)
            times.append((tag, start, time.monotonic()))
        return times, float(loss.detach().float()) if loss is not None else math.nan


def write_sidecar(cfg: Config, rank: dc.Rank, ranks: list[dict[str, Any]], nvtx: dc.CountingNvtx, started: str,
                  out_meta: str | None, expect: str | None) -> dict[str, Any]:
    seconds = dc.window(ranks)
    images = rank.world_size * cfg.batch_size * cfg.steps
    gpus = [r["gpu_info"]["index"] for r in ranks if "index" in r["gpu_info"]]
    nodes = [r["bound_numa_node"] for r in ranks]
    flat = {
        # Top-level scalars are nsysan's metadata keys (--by): the configuration, and one outcome.
        "workload": "ddp", "model": cfg.model, "variant": cfg.variant, "world_size": rank.world_size,
        "batch_size": cfg.batch_size, "global_batch_size": cfg.batch_size * rank.world_size,
        "precision": cfg.precision, "workers": cfg.workers, "prefetch_factor": cfg.effective_prefetch,
        "numa_binding": cfg.numa_binding, "device": cfg.device, "backend": cfg.dist_backend,
        "steps": cfg.steps, "warmup_steps": cfg.warmup_steps,
        "gpus": ",".join(map(str, gpus)) or None,
        "numa_nodes": ",".join(map(str, nodes)) if all(n is not None for n in nodes) else None,
        "samples_per_s": round(images / seconds, 3) if seconds else None,
    }
    measured = {"steps": cfg.steps, "images": images, "seconds": seconds,
                "images_per_s_per_rank": round(images / rank.world_size / seconds, 3) if seconds else None,
                "step_ms_mean_per_rank": [r["timing"]["ms_mean"] for r in ranks]}
    return dc.write_outputs(flat, cfg, ranks, measured, nvtx, started, out_meta, expect)


def run(cfg: Config, out_meta: str | None = None, expect: str | None = None) -> dict[str, Any] | None:
    """Train; rank 0 returns (and writes) the sidecar, the other ranks None."""
    cfg.validate()
    started = datetime.datetime.now().astimezone().isoformat()
    rank = dc.start(cfg)
    try:
        nvtx = dc.CountingNvtx(cfg.nvtx, cfg.device)
        times, last_loss = Trainer(cfg, rank, nvtx).run()
        ranks = dc.gather(rank, dc.rank_record(rank, nvtx, times, "step", {"last_loss": last_loss}))
        if ranks is None:
            return None
        return write_sidecar(cfg, rank, ranks, nvtx, started, out_meta, expect)
    finally:
        dc.finish()


def main(argv: list[str] | None = None) -> int:
    cfg, out_meta, expect = dc.parse_config(Config, PROG, __doc__.splitlines()[0], argv)
    try:
        meta = run(cfg, out_meta, expect)
    except (dc.UsageError, SetupError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if meta is not None:
        print(f"{PROG}: {cfg.model}, {meta['world_size']} rank(s) x batch {cfg.batch_size}, {cfg.precision}, "
              f"{cfg.workers} worker(s): {meta['samples_per_s']} images/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
