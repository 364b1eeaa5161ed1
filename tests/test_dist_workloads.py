"""workloads/ddp_train.py and workloads/partition.py: NVTX ranges per stage in a world of one (in this process),
the tensor-parallel arithmetic, one-line errors, and real 2-rank captures (gloo, under torchrun and nsys) whose
exports hold, per process, exactly the ranges each rank says it pushed."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support import NSYS_SESSION_LOST, captured_nvtx, nvtx_ranges_by_pid, require_torch

WORKLOADS = Path(__file__).parents[1] / "workloads"
require_torch()


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, WORKLOADS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ddp = _load("ddp_train")
part = _load("partition")
dc = sys.modules["dist_common"]
numa_bind = _load("numa_bind")

DDP_STAGES = ["data", "forward", "backward", "optimizer"]
TINY_DDP = dict(device="cpu", model="wrn10-1", batch_size=4, steps=2, warmup_steps=1, workers=0)
TINY_PARTITION = dict(device="cpu", layers=3, hidden=16, batch_size=2, seq_len=4, batches=2, warmup_batches=1)


class Recorder:
    """Stands in for vit_pipeline's Nvtx: records (range, enclosing range) instead of emitting NVTX."""

    backend = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None]] = []
        self.stack: list[str] = []

    @contextlib.contextmanager
    def range(self, name: str):
        self.events.append((name, self.stack[-1] if self.stack else None))
        self.stack.append(name)
        try:
            yield
        finally:
            self.stack.pop()

    def children(self, parent: str) -> list[str]:
        return [name for name, p in self.events if p == parent]


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(dc, "Nvtx", lambda choice, device: rec)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # a world of one, whatever the environment
        monkeypatch.delenv(key, raising=False)
    return rec


# -- in this process: a world of one ----------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_ddp_step_ranges_and_sidecar(recorder, tmp_path, precision):
    meta_path, expect_path = tmp_path / "run.meta.json", tmp_path / "run.expect.json"
    meta = ddp.run(ddp.Config(**TINY_DDP, precision=precision, variant="v"), str(meta_path), str(expect_path))
    outer = [name for name, parent in recorder.events if parent is None]
    assert outer == ["warmup_0", "step_1", "step_2"]
    for name in outer:
        assert recorder.children(name) == DDP_STAGES, name
    assert not [n for n, p in recorder.events if p in DDP_STAGES]  # nothing nested deeper
    expect = json.loads(expect_path.read_text())
    assert expect["world_size"] == 1 and [r["pid"] for r in expect["ranks"]] == [os.getpid()]
    assert expect["ranks"][0]["ranges"] == dict(Counter(name for name, _ in recorder.events))
    assert json.loads(meta_path.read_text()) == json.loads(json.dumps(meta, default=str))
    flat = {k: meta[k] for k in ("workload", "model", "variant", "world_size", "batch_size", "global_batch_size",
                                 "precision", "workers", "prefetch_factor", "numa_binding", "backend", "steps")}
    assert flat == {"workload": "ddp", "model": "wrn10-1", "variant": "v", "world_size": 1, "batch_size": 4,
                    "global_batch_size": 4, "precision": precision, "workers": 0, "prefetch_factor": None,
                    "numa_binding": False, "backend": "gloo", "steps": 2}
    assert meta["samples_per_s"] > 0 and meta["measured"]["images"] == 8
    (rank,) = meta["ranks"]
    assert rank["timing"]["warmup"] == 1 and rank["timing"]["measured"] == 2
    assert rank["bound_numa_node"] is None and rank["gpu_info"] == {"device": "cpu"}
    assert math.isfinite(rank["last_loss"])


def test_gradscaler_only_in_fp16(recorder):
    rank = dc.Rank(0, 0, 1, __import__("torch").device("cpu"), None)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{dc._free_port()}", rank=0, world_size=1)
    try:
        enabled = {p: ddp.Trainer(ddp.Config(**TINY_DDP, precision=p), rank, dc.CountingNvtx("none", "cpu"))
                   .scaler.is_enabled() for p in ("fp32", "fp16", "bf16")}
    finally:
        dist.destroy_process_group()
    assert enabled == {"fp32": False, "fp16": True, "bf16": False}


def test_models_have_100_classes():
    import torch

    for name, params in (("resnet18", 11_220_132), ("wrn10-1", 83_700)):
        model = ddp.build_model(ddp.Config(model=name))
        assert sum(p.numel() for p in model.parameters()) == params, name
        assert tuple(model(torch.zeros(2, 3, 32, 32)).shape) == (2, 100)


@pytest.mark.parametrize("mode", ["layerwise", "tensor"])
def test_partition_ranges_in_a_world_of_one(recorder, tmp_path, mode):
    meta = part.run(part.Config(**TINY_PARTITION, mode=mode), str(tmp_path / "m.json"), str(tmp_path / "e.json"))
    outer = [name for name, parent in recorder.events if parent is None]
    assert outer == ["warmup_0", "batch_1", "batch_2"]
    layers = ["layer_0", "layer_1", "layer_2"]
    # One rank holds every layer: layer-wise has no neighbour to send to; tensor-parallel still all-reduces.
    stages = layers if mode == "layerwise" else [s for layer in layers for s in (layer, "allreduce")]
    for name in outer:
        assert recorder.children(name) == stages
    assert (meta["model"], meta["mode"], meta["ffn_hidden"], meta["world_size"]) == ("mlp3x16", mode, 64, 1)
    assert meta["measured"]["tokens"] == 2 * 2 * 4
    assert meta["ranks"][0]["layers"] == [0, 2]
    assert meta["measured"]["communication_per_batch_per_rank"] == [0 if mode == "layerwise" else 3]


def test_layer_blocks_are_contiguous_and_cover_every_layer():
    assert [list(part.layer_block(5, 2, r)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(part.layer_block(16, 3, r)) for r in range(3)] == [list(range(6)), list(range(6, 11)),
                                                                    list(range(11, 16))]
    assert [list(part.layer_block(2, 2, r)) for r in range(2)] == [[0], [1]]


def test_tensor_parallel_slices_sum_to_the_whole_layer():
    """Column-parallel fc1 and row-parallel fc2: the all-reduced partial outputs equal the unsplit MLP."""
    import torch

    gen = torch.Generator().manual_seed(3)
    slices = [part.Mlp(torch, 8, 16, "cpu", torch.float64, gen) for _ in range(2)]
    for s in slices:
        s.fc1_bias = torch.randn(s.fc1_bias.shape, generator=gen, dtype=torch.float64)
    whole = part.Mlp(torch, 8, 32, "cpu", torch.float64, gen)
    whole.fc1 = torch.cat([s.fc1 for s in slices], dim=1)
    whole.fc1_bias = torch.cat([s.fc1_bias for s in slices])
    whole.fc2 = torch.cat([s.fc2 for s in slices], dim=0)
    x = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    assert torch.allclose(sum(s.partial(x) for s in slices), whole.partial(x), atol=1e-12)


# -- errors: one line, exit 2 --------------------------------------------------------------------------------

@pytest.mark.parametrize("script, args, message", [
    ("ddp_train", ["--model", "resnet19"], "ddp_train: error: --model 'resnet19': expected resnet18 or wrn"),
    ("ddp_train", ["--model", "wrn12-2"], "ddp_train: error: --model 'wrn12-2'"),
    ("ddp_train", ["--steps", "x"], "ddp_train: error: argument --steps: invalid int value: 'x'"),
    ("ddp_train", ["--device", "cpu", "--gpus", "0"], "ddp_train: error: --gpus needs --device cuda"),
    ("partition", ["--mode", "ring"], "partition: error: --mode must be one of layerwise, tensor, not 'ring'"),
    ("partition", ["--device", "cpu", "--backend", "nccl"], "partition: error: --backend nccl needs --device cuda"),
    ("numa_bind", ["--nodes", "0", "--", "true"], "numa_bind: error: LOCAL_RANK is None: run under torchrun"),
    ("numa_bind", ["--nodes", "a", "--", "true"], "numa_bind: error: --nodes 'a': expected NUMA node numbers"),
])
def test_bad_input_is_one_line_and_exit_2(script, args, message):
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, str(WORKLOADS / f"{script}.py"), *args], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(message), done.stderr


def test_partition_world_checks_come_before_torch():
    with pytest.raises(dc.UsageError, match="layer-wise over 4 ranks needs at least one layer per rank"):
        part.Config(layers=3).validate_world(4)
    with pytest.raises(dc.UsageError, match="width 12 .* not divisible by 5 ranks"):
        part.Config(mode="tensor", hidden=3).validate_world(5)
    part.Config(mode="tensor", hidden=3).validate_world(4)


def test_numa_bind_picks_the_local_ranks_node(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(numa_bind.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(numa_bind.shutil, "which", lambda name: f"/usr/bin/{Path(name).name}")
    numa_bind.main(["--nodes", "0,3", "--numactl", "numactl", "--", "python", "x.py", "--a"])
    ((path, argv, env),) = calls
    assert (path, argv) == ("/usr/bin/numactl", ["/usr/bin/numactl", "--cpunodebind=3", "--membind=3", "python",
                                                 "x.py", "--a"])
    assert env[numa_bind.BOUND_NODE_ENV] == "3" and env["LOCAL_RANK"] == "1"
    assert numa_bind.BOUND_NODE_ENV not in os.environ  # only the rank's environment says where it is bound
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(SystemExit) as stop:
        numa_bind.main(["--nodes", "0,3", "--", "python"])
    assert stop.value.code == 2


# -- two gloo ranks under torchrun, under nsys ---------------------------------------------------------------

def capture(nsys: str, folder: Path, script: str, args: list[str], launcher: list[str] = ()) -> tuple[dict, dict, dict]:
    """Profile ``torchrun --nproc_per_node 2 <script> ARGS``; return (expect, sidecar, ranges per pid in the export).
    A capture that nsys itself lost (see :func:`tests.support.captured_nvtx`) is made once more."""
    rep, meta, expect = folder / "run.nsys-rep", folder / "run.meta.json", folder / "run.expect.json"
    sqlite = folder / "run.sqlite"
    command = [nsys, "profile", "-t", "nvtx", "-s", "none", "--cpuctxsw=none", "--force-overwrite", "true",
               "-o", str(rep), sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *launcher, str(WORKLOADS / f"{script}.py"), "--device", "cpu", *args, "--out-meta", str(meta),
               "--expect", str(expect)]
    for attempt in (1, 2):
        for stale in (rep, meta, expect, sqlite):
            stale.unlink(missing_ok=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        output = done.stdout[-3000:] + done.stderr[-3000:]
        if done.returncode == 0 and expect.is_file():
            exported = subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "-o",
                                       str(sqlite), str(rep)], capture_output=True, text=True, timeout=300)
            assert exported.returncode == 0, exported.stderr[-3000:]
            if captured_nvtx(sqlite) or attempt == 2:
                break
        elif not any(words in output for words in NSYS_SESSION_LOST) or attempt == 2:
            raise AssertionError(f"the capture failed (exit {done.returncode}):\n{output}")
    return json.loads(expect.read_text()), json.loads(meta.read_text()), nvtx_ranges_by_pid(sqlite)


def test_ddp_two_ranks_under_nsys(nsys, tmp_path):
    """Both torchrun children are traced (nsys follows them), each with exactly the ranges it pushed; the
    DataLoader worker processes push none. Ranks are bound through numa_bind.py (numactl) when it is installed."""
    launcher = []
    if os.path.exists("/usr/bin/numactl"):
        launcher = ["--no-python", sys.executable, str(WORKLOADS / "numa_bind.py"), "--nodes", "0,0", "--",
                    sys.executable]
    expect, meta, found = capture(nsys, tmp_path, "ddp_train", [
        "--model", "wrn10-1", "--batch-size", "4", "--steps", "3", "--warmup-steps", "1", "--workers", "1",
        "--precision", "fp32"], launcher)
    per_rank = {"warmup_0": 1, "step_1": 1, "step_2": 1, "step_3": 1, **dict.fromkeys(DDP_STAGES, 4)}
    assert expect["world_size"] == 2 and expect["nvtx_backend"] == "nvtx"
    assert [r["ranges"] for r in expect["ranks"]] == [per_rank, per_rank]
    pids = [r["pid"] for r in expect["ranks"]]
    assert len(set(pids)) == 2 and [r["pid"] for r in meta["ranks"]] == pids
    assert found == {pid: per_rank for pid in pids}
    assert (meta["world_size"], meta["global_batch_size"], meta["workers"], meta["prefetch_factor"]) == (2, 8, 1, 2)
    assert meta["measured"]["images"] == 2 * 4 * 3 and meta["samples_per_s"] > 0
    if launcher:
        assert [r["bound_numa_node"] for r in meta["ranks"]] == [0, 0] and meta["numa_nodes"] == "0,0"
        assert all(r["binding"]["mems"] == [0] for r in meta["ranks"])


def test_partition_two_ranks_under_nsys(nsys, tmp_path):
    """Layer-wise over two ranks: rank 0 runs layers 0-2 and sends, rank 1 receives and runs layers 3-4."""
    expect, meta, found = capture(nsys, tmp_path, "partition", [
        "--mode", "layerwise", "--layers", "5", "--hidden", "32", "--batch-size", "2", "--seq-len", "8",
        "--batches", "3", "--warmup-batches", "1", "--precision", "fp32"])
    outer = {"warmup_0": 1, "batch_1": 1, "batch_2": 1, "batch_3": 1}
    rank0 = {**outer, "layer_0": 4, "layer_1": 4, "layer_2": 4, "send": 4}
    rank1 = {**outer, "recv": 4, "layer_3": 4, "layer_4": 4}
    assert [r["ranges"] for r in expect["ranks"]] == [rank0, rank1]
    assert found == {expect["ranks"][0]["pid"]: rank0, expect["ranks"][1]["pid"]: rank1}
    assert [r["layers"] for r in meta["ranks"]] == [[0, 2], [3, 4]]
    assert meta["measured"]["communication_per_batch_per_rank"] == [1, 1]
    assert meta["measured"]["tokens"] == 3 * 2 * 8 and meta["measured"]["tokens_per_s"] > 0
