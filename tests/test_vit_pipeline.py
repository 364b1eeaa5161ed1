"""workloads/vit_pipeline.py: NVTX ranges per batch and stage in every pipeline mode, the numpy stand-in model,
the sidecar, and one real capture under nsys (CPU mode) read back by nsysan."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import nsysan

WORKLOAD = Path(__file__).parents[1] / "workloads" / "vit_pipeline.py"
_spec = importlib.util.spec_from_file_location("vit_pipeline", WORKLOAD)
vp = importlib.util.module_from_spec(_spec)
sys.modules["vit_pipeline"] = vp
_spec.loader.exec_module(vp)
import workload_host as host  # noqa: E402  (importable once vit_pipeline put workloads/ on sys.path)

STAGES = ("preprocess", "h2d", "forward", "d2h")
TINY = dict(patch=16, depth=1, dim=32, resolution=32, batch_size=2, num_samples=5, warmup_batches=2, device="cpu")

HAVE_TORCH = importlib.util.find_spec("torch") is not None


class Recorder(vp.Nvtx):
    """Records (thread name, event, range name) instead of emitting NVTX ranges."""

    def __init__(self) -> None:
        self.backend = "recorder"
        self.events: list[tuple[str, str, str]] = []
        self.stacks: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def push(self, name: str) -> None:
        thread = threading.current_thread().name
        with self.lock:
            parent = (self.stacks.get(thread) or [None])[-1]
            self.stacks.setdefault(thread, []).append(name)
            self.events.append((thread, name, parent))

    def pop(self) -> None:
        with self.lock:
            self.stacks[threading.current_thread().name].pop()


def record(**changes) -> tuple[Recorder, list, object]:
    cfg = vp.Config(**{**TINY, **changes})
    cfg.validate()
    rec = Recorder()
    times = vp.Pipeline(cfg, vp.make_backend(cfg), rec).run()
    return rec, times, cfg


def test_parse_cpu_list_and_binding(tmp_path):
    assert host.parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert host.parse_cpu_list("5") == [5]
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCpus_allowed:\tff\nCpus_allowed_list:\t0-2,6\nMems_allowed_list:\t1\n")
    assert host.binding(str(status)) == {"cpus_allowed_list": "0-2,6", "mems_allowed_list": "1",
                                       "cpus": [0, 1, 2, 6], "mems": [1]}
    assert host.binding(str(tmp_path / "missing"))["cpus"] is None


def test_gpu_numa_node_from_sysfs(tmp_path):
    assert host.sysfs_bus_id("00000000:1B:00.0") == "0000:1b:00.0"
    (tmp_path / "0000:1b:00.0").mkdir()
    (tmp_path / "0000:1b:00.0" / "numa_node").write_text("1\n")
    (tmp_path / "0000:2c:00.0").mkdir()
    (tmp_path / "0000:2c:00.0" / "numa_node").write_text("-1\n")
    assert host.numa_node_of("00000000:1B:00.0", root=str(tmp_path)) == 1
    assert host.numa_node_of("0000:2c:00.0", root=str(tmp_path)) is None  # -1: unknown (VMs)
    assert host.numa_node_of("0000:99:00.0", root=str(tmp_path)) is None


def test_config_checks_and_batches():
    cfg = vp.Config(patch=32, depth=2, dim=128, num_samples=95, batch_size=10, warmup_batches=3)
    assert (cfg.model, cfg.n_heads, cfg.measured_batches, cfg.total_batches) == ("vit32x2x128", 2, 10, 13)
    assert vp.Config(patch=0, depth=0, dim=0).noop
    for bad, words in [(dict(patch=48), "not a multiple of patch 48"), (dict(patch=0), "only no-op"),
                       (dict(dim=100, heads=3), "not divisible"), (dict(pipeline="fast"), "--pipeline"),
                       (dict(device="cuda", backend="numpy"), "numpy backend"),
                       (dict(device="cpu", backend="numpy", compile="default"), "torch backend")]:
        with pytest.raises(ValueError, match=words):
            vp.Config(**{**TINY, **bad}).validate()


def test_numpy_model_shapes():
    cfg = vp.Config(**TINY)
    backend = vp.NumpyBackend(cfg)
    x = backend.preprocess_host(backend.raw(0), 0)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    logits, tokens = backend.forward(x)
    assert logits.shape == (2, 1000) and tokens.shape == (2, (32 // 16) ** 2 + 1, 32)
    assert np.isfinite(logits).all()
    assert [a.shape for a in backend.d2h((logits, tokens))] == [(2, 1000)]
    enhanced = vp.NumpyBackend(vp.Config(**{**TINY, "d2h": "enhanced"}))
    assert len(enhanced.d2h((logits, tokens))) == 2
    noop = vp.NumpyBackend(vp.Config(**{**TINY, "patch": 0, "depth": 0, "dim": 0}))
    (out,) = noop.forward(x)
    assert out is x  # no-op model: the input goes back unchanged (transfer baseline)


def _check_ranges(rec: Recorder, cfg, *, prefetch: bool, copy_in_prefetch: bool) -> None:
    main = [(name, parent) for thread, name, parent in rec.events if thread == "MainThread"]
    outer = [name for name, parent in main if parent is None]
    assert outer == [f"warmup_{i}" for i in range(cfg.warmup_batches)] + [
        f"batch_{i}" for i in range(cfg.warmup_batches, cfg.total_batches)]
    counts = Counter(name for _, name, _ in rec.events)
    for stage in STAGES:  # exactly one instance of each stage per batch, whatever the mode
        assert counts[stage] == cfg.total_batches, stage
    if prefetch:
        side = [(name, parent) for thread, name, parent in rec.events if thread == "prefetch"]
        assert [n for n, p in side if p is None] == [f"warmup_prefetch_{i}" for i in range(cfg.warmup_batches)] + [
            f"prefetch_{i}" for i in range(cfg.warmup_batches, cfg.total_batches)]
        moved = {"preprocess"} if cfg.preprocess == "cpu" else set()
        if copy_in_prefetch:
            moved.add("h2d")
        assert {n for n, p in side if p is not None} == moved
    else:
        assert {thread for thread, _, _ in rec.events} == {"MainThread"}
    # Stages on the main thread sit directly inside a warmup_/batch_ range, in pipeline order.
    order = [n for n, p in main if p is not None and p.startswith("batch_")]
    expected = [s for s in (("h2d", "preprocess") if cfg.preprocess == "gpu" else ("preprocess", "h2d"))
                if s in order] + ["forward", "d2h"]
    assert order[:len(expected)] == expected


@pytest.mark.parametrize("pipeline", ["sync", "async", "streams"])
@pytest.mark.parametrize("preprocess", ["cpu", "gpu"])
def test_ranges_in_every_pipeline_mode(pipeline, preprocess):
    rec, times, cfg = record(pipeline=pipeline, preprocess=preprocess, queue_depth=1)
    _check_ranges(rec, cfg, prefetch=pipeline != "sync", copy_in_prefetch=pipeline == "streams")
    assert [t[0] for t in times] == ["warmup"] * cfg.warmup_batches + ["batch"] * cfg.measured_batches


def test_producer_failure_reaches_the_main_thread(monkeypatch):
    cfg = vp.Config(**{**TINY, "pipeline": "async"})
    backend = vp.make_backend(cfg)

    def broken(raw, slot):
        raise RuntimeError("bad image")

    monkeypatch.setattr(backend, "preprocess_host", broken)
    with pytest.raises(RuntimeError, match="bad image"):
        vp.Pipeline(cfg, backend, Recorder()).run()


def test_sidecar_written_by_main(tmp_path):
    meta_path = tmp_path / "run.meta.json"
    code = vp.main(["--model", "vit16x1x32", "--resolution", "32", "--batch-size", "3", "--num-samples", "7",
                    "--warmup-batches", "1", "--device", "cpu", "--numa", "0", "--variant", "pageable",
                    "--memory", "pageable", "--nvtx", "none", "--out-meta", str(meta_path)])
    assert code == 0
    meta = json.loads(meta_path.read_text())
    assert {k: meta[k] for k in ("model", "gpu", "numa", "variant", "batch_size", "gpu_numa_node")} == {
        "model": "vit16x1x32", "gpu": 0, "numa": 0, "variant": "pageable", "batch_size": 3, "gpu_numa_node": None}
    assert meta["samples_per_s"] > 0
    assert meta["measured"]["batches"] == 3 and meta["measured"]["samples"] == 9
    assert meta["config"]["memory"] == "pageable" and meta["config"]["backend"] == "numpy"
    status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
    assert meta["binding"]["cpus_allowed_list"] == status["Cpus_allowed_list"].strip()
    assert meta["binding"]["cpus"] == host.parse_cpu_list(status["Cpus_allowed_list"])
    assert meta["versions"]["numpy"] == np.__version__
    # nsysan's loader: the flat fields are metadata keys; nested objects are not.
    from nsysan.metadata import read_metadata

    keys = read_metadata(tmp_path / "run.sqlite")
    assert keys["model"] == "vit16x1x32" and keys["batch_size"] == 3
    assert not {"config", "binding", "versions", "gpu_info", "measured"} & set(keys)


def test_numa_and_variant_from_the_sidecar_name(tmp_path):
    meta_path = tmp_path / "pipeline_gpu0_numa3_vit16x1x32_pinned_q2.meta.json"
    vp.main(["--model", "vit16x1x32", "--resolution", "32", "--batch-size", "2", "--num-samples", "2",
             "--warmup-batches", "0", "--device", "cpu", "--nvtx", "none", "--out-meta", str(meta_path)])
    meta = json.loads(meta_path.read_text())
    assert (meta["numa"], meta["variant"]) == (3, "pinned_q2")


def test_bad_model_exits_2():
    done = subprocess.run([sys.executable, str(WORKLOAD), "--model", "vit48x2x128", "--device", "cpu"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "resolution 224 is not a multiple of patch 48" in done.stderr


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
@pytest.mark.parametrize("pipeline", ["sync", "streams"])
def test_torch_backend_on_cpu(pipeline):
    rec, times, cfg = record(backend="torch", pipeline=pipeline, precision="fp32", d2h="enhanced")
    _check_ranges(rec, cfg, prefetch=pipeline != "sync", copy_in_prefetch=pipeline == "streams")
    backend = vp.TorchBackend(cfg)
    x, _ = backend.h2d(backend.preprocess_host(backend.raw(0), 0))
    logits, tokens = backend.forward(x)
    assert tuple(logits.shape) == (2, 1000) and tuple(tokens.shape) == (2, 5, 32)


def test_capture_under_nsys_async(nsys, tmp_path):
    """A real capture (CPU mode, async pipeline): nsysan sees one instance of every stage per measured batch
    once warm-up is left out, and the prefetch thread's ranges apart from the batches."""
    rep = tmp_path / "pipeline_gpu0_numa0_vit16x1x32_async.nsys-rep"
    meta = tmp_path / "pipeline_gpu0_numa0_vit16x1x32_async.meta.json"
    args = ["--model", "vit16x1x32", "--resolution", "32", "--batch-size", "2", "--num-samples", "6",
            "--warmup-batches", "2", "--device", "cpu", "--pipeline", "async", "--variant", "async"]
    done = subprocess.run([nsys, "profile", "-t", "nvtx,osrt", "-s", "none", "--cpuctxsw=none",
                           "--force-overwrite", "true", "-o", str(rep), sys.executable, str(WORKLOAD), *args,
                           "--out-meta", str(meta)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    nsysan.export([rep], nsys=nsys)
    # The default selection: warm-up (warmup_*, warmup_prefetch_*) left out, numbered ranges pooled.
    result = nsysan.latency(tmp_path, by=["model", "variant"])
    assert result.ok and result.analysed == 1, (result.failures, sorted(p.name for p in tmp_path.iterdir()))
    table = result.frame
    counts = dict(zip(table["range"].to_list(), table["instances"].to_list()))
    assert counts == {"batch_*": 3, "prefetch_*": 3, **dict.fromkeys(STAGES, 3)}
    assert set(table["variant"].to_list()) == {"async"}
