"""A dense transformer-MLP stack (inference) split over the ranks layer-wise or tensor-parallel, for nsys.

Each layer is ``x + fc2(gelu(fc1(layernorm(x))))`` with ``fc1`` of ``hidden -> ffn_multiplier * hidden``; a batch is
``batch_size x seq_len`` tokens of width ``hidden``.

* ``--mode layerwise`` (pipeline stages): rank ``r`` holds a contiguous block of layers (the first
  ``layers % world`` ranks one more); per batch it receives the activations from rank ``r - 1`` (``recv``), runs
  its layers (``layer_<k>``, ``k`` the global layer index) and sends the result to rank ``r + 1`` (``send``):
  point-to-point transfers between neighbours only. Rank 0 makes the input; the last rank keeps the output.
* ``--mode tensor`` (Megatron-style): every rank holds a 1/world column slice of each ``fc1`` and the matching row
  slice of ``fc2``; per layer it computes its partial output (``layer_<k>``), and the partial outputs are summed
  across the ranks with one all-reduce (``allreduce``) before the residual add.

Per batch, on each rank's main thread: ``warmup_<i>`` (the first ``--warmup-batches``) or ``batch_<i>``, ``i``
counting from 0 over all batches, around those stage ranges in order. On GPUs a batch ends with
``torch.cuda.synchronize()`` inside its range. Run under torchrun like ddp_train.py; rank 0 writes ``--out-meta``
and ``--expect``. docs/workloads.md has it all.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, also when imported

import dist_common as dc  # noqa: E402
from workload_host import SetupError  # noqa: E402

PROG = "partition"
MODES = ("layerwise", "tensor")
#: Distinct input batches made up front and cycled through (rank 0 in layerwise mode, every rank in tensor mode).
INPUT_POOL = 2


@dataclasses.dataclass
class Config(dc.CommonConfig):
    mode: str = "layerwise"
    layers: int = 16
    hidden: int = 1024
    ffn_multiplier: int = 4
    batch_size: int = 8
    seq_len: int = 512
    batches: int = 50                 # measured batches
    warmup_batches: int = 10

    @property
    def model(self) -> str:
        return f"mlp{self.layers}x{self.hidden}"

    @property
    def ffn(self) -> int:
        return self.ffn_multiplier * self.hidden

    @property
    def total_batches(self) -> int:
        return self.warmup_batches + self.batches

    def validate(self) -> None:
        self.validate_common()
        if self.mode not in MODES:
            raise dc.UsageError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        for key in ("layers", "hidden", "ffn_multiplier", "batch_size", "seq_len", "batches"):
            if getattr(self, key) < 1:
                raise dc.UsageError(f"--{key.replace('_', '-')} must be at least 1")
        if self.warmup_batches < 0:
            raise dc.UsageError("--warmup-batches must not be negative")

    def validate_world(self, world: int) -> None:
        """Checks that need the world size (known once torchrun started the ranks)."""
        if self.mode == "layerwise" and self.layers < world:
            raise dc.UsageError(f"--layers {self.layers}: layer-wise over {world} ranks needs at least one layer "
                                "per rank")
        if self.mode == "tensor" and self.ffn % world:
            raise dc.UsageError(f"--mode tensor: the MLP width {self.ffn} ({self.ffn_multiplier} x hidden) is not "
                                f"divisible by {world} ranks")


def layer_block(layers: int, world: int, rank: int) -> range:
    """The contiguous global layer indexes of ``rank`` (the first ``layers % world`` ranks hold one more)."""
    base, extra = divmod(layers, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class Mlp:
    """One layer's weights on this rank: full (layer-wise) or a column/row slice (tensor-parallel)."""

    def __init__(self, torch: Any, hidden: int, ffn: int, device: Any, dtype: Any, gen: Any) -> None:
        # Drawn where they live (``gen`` is on ``device``): GBs of fp32 on the host would take longer than the run.
        def weight(rows: int, cols: int) -> Any:
            return (torch.randn(rows, cols, generator=gen, device=device) * (rows ** -0.5)).to(dtype)

        self.torch = torch
        self.norm_weight = torch.ones(hidden, device=device, dtype=dtype)
        self.norm_bias = torch.zeros(hidden, device=device, dtype=dtype)
        self.fc1, self.fc1_bias = weight(hidden, ffn), torch.zeros(ffn, device=device, dtype=dtype)
        self.fc2 = weight(ffn, hidden)

    def partial(self, x: Any) -> Any:
        """fc2(gelu(fc1(norm(x)))) over this rank's slice (no fc2 bias: it would be summed once per rank)."""
        F = self.torch.nn.functional
        h = F.layer_norm(x, x.shape[-1:], self.norm_weight, self.norm_bias)
        return F.gelu(h @ self.fc1 + self.fc1_bias) @ self.fc2


class Partitioned:
    def __init__(self, cfg: Config, rank: dc.Rank, nvtx: dc.CountingNvtx) -> None:
        import torch

        self.torch, self.cfg, self.rank, self.nvtx = torch, cfg, rank, nvtx
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]
        world, me = rank.world_size, rank.rank
        self.owned = layer_block(cfg.layers, world, me) if cfg.mode == "layerwise" else range(cfg.layers)
        width = cfg.ffn // world if cfg.mode == "tensor" else cfg.ffn
        self.layers = {}
        for k in self.owned:
            # Seeded per layer (and per slice in tensor mode): the weights do not depend on the run order.
            gen = torch.Generator(rank.device).manual_seed(
                cfg.seed * 1_000_003 + k * 1009 + (me if cfg.mode == "tensor" else 0))
            self.layers[k] = Mlp(torch, cfg.hidden, width, rank.device, self.dtype, gen)
        shape = (cfg.batch_size, cfg.seq_len, cfg.hidden)
        needs_input = cfg.mode == "tensor" or me == 0
        gen = torch.Generator(rank.device).manual_seed(cfg.seed)
        self.inputs = [torch.randn(shape, generator=gen, device=rank.device).to(self.dtype)
                       for _ in range(INPUT_POOL if needs_input else 0)]
        self.recv_buffer = torch.empty(shape, device=rank.device, dtype=self.dtype)
        self.first, self.last = me == 0, me == world - 1
        self.comm_per_batch = (cfg.layers if cfg.mode == "tensor"
                               else int(not self.first) + int(not self.last))  # recv + send

    def layerwise(self, index: int) -> Any:
        import torch.distributed as dist

        nvtx, me = self.nvtx, self.rank.rank
        if self.first:
            x = self.inputs[index % len(self.inputs)]
        else:
            with nvtx.range("recv"):
                dist.recv(self.recv_buffer, src=me - 1)
            x = self.recv_buffer
        for k in self.owned:
            with nvtx.range(f"layer_{k}"):
                x = x + self.layers[k].partial(x)
        if not self.last:
            with nvtx.range("send"):
                dist.send(x.contiguous(), dst=me + 1)
        return x

    def tensor(self, index: int) -> Any:
        import torch.distributed as dist

        x = self.inputs[index % len(self.inputs)]
        for k in self.owned:
            with self.nvtx.range(f"layer_{k}"):
                y = self.layers[k].partial(x)
            with self.nvtx.range("allreduce"):
                dist.all_reduce(y)
            x = x + y
        return x

    def run(self) -> dc.Times:
        cfg = self.cfg
        forward = self.layerwise if cfg.mode == "layerwise" else self.tensor
        times: dc.Times = []
        # no_grad, not inference_mode: gloo runs collectives on its own threads, outside inference mode, and
        # may not write into inference tensors.
        with self.torch.no_grad():
            for i in range(cfg.total_batches):
                tag = "warmup" if i < cfg.warmup_batches else "batch"
                start = time.monotonic()
                with self.nvtx.range(f"{tag}_{i}"):
                    forward(i)
                    dc.synchronize(self.rank)
                times.append((tag, start, time.monotonic()))
        return times


def write_sidecar(cfg: Config, rank: dc.Rank, ranks: list[dict[str, Any]], nvtx: dc.CountingNvtx, started: str,
                  out_meta: str | None, expect: str | None) -> dict[str, Any]:
    seconds = dc.window(ranks)
    samples = cfg.batches * cfg.batch_size  # every sequence passes all ranks once, in either mode
    gpus = [r["gpu_info"]["index"] for r in ranks if "index" in r["gpu_info"]]
    nodes = [r["bound_numa_node"] for r in ranks]
    flat = {
        "workload": "partition", "model": cfg.model, "variant": cfg.variant, "mode": cfg.mode,
        "world_size": rank.world_size, "layers": cfg.layers, "hidden": cfg.hidden, "ffn_hidden": cfg.ffn,
        "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "precision": cfg.precision,
        "numa_binding": cfg.numa_binding, "device": cfg.device, "backend": cfg.dist_backend,
        "batches": cfg.batches, "warmup_batches": cfg.warmup_batches,
        "gpus": ",".join(map(str, gpus)) or None,
        "numa_nodes": ",".join(map(str, nodes)) if all(n is not None for n in nodes) else None,
        "samples_per_s": round(samples / seconds, 3) if seconds else None,
    }
    measured = {"batches": cfg.batches, "samples": samples, "tokens": samples * cfg.seq_len, "seconds": seconds,
                "tokens_per_s": round(samples * cfg.seq_len / seconds, 1) if seconds else None,
                "batch_ms_mean_per_rank": [r["timing"]["ms_mean"] for r in ranks],
                "communication_per_batch_per_rank": [r["communication_per_batch"] for r in ranks],
                "layers_per_rank": [r["layers"] for r in ranks]}
    return dc.write_outputs(flat, cfg, ranks, measured, nvtx, started, out_meta, expect)


def run(cfg: Config, out_meta: str | None = None, expect: str | None = None) -> dict[str, Any] | None:
    """Run every batch; rank 0 returns (and writes) the sidecar, the other ranks None."""
    cfg.validate()
    cfg.validate_world(int(os.environ.get("WORLD_SIZE", "1")))  # before torch is imported: fail fast
    started = datetime.datetime.now().astimezone().isoformat()
    rank = dc.start(cfg)
    try:
        nvtx = dc.CountingNvtx(cfg.nvtx, cfg.device)
        model = Partitioned(cfg, rank, nvtx)
        times = model.run()
        extra = {"layers": [model.owned.start, model.owned.stop - 1], "communication_per_batch": model.comm_per_batch}
        ranks = dc.gather(rank, dc.rank_record(rank, nvtx, times, "batch", extra))
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
        print(f"{PROG}: {cfg.model} {cfg.mode} over {meta['world_size']} rank(s), batch {cfg.batch_size} x "
              f"{cfg.seq_len}, {cfg.precision}: {meta['measured']['tokens_per_s']} tokens/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
