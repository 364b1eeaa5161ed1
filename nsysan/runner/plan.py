"""The plan of a study: every run (GPU x NUMA node x model x variant, per job), whether it can run here and why
not, and the command that runs it: ``numactl --cpunodebind=N --membind=N nsys profile ... python vit_pipeline.py``.
Experiments of a distributed kind (``workload.kind`` ddp or partition) are planned by :mod:`nsysan.runner.dist`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsysan.host import Machine
from nsysan.runner import dist
from nsysan.runner.config import ConfigError, Job

REPORT_PREFIX = "pipeline"
#: ``test`` keys passed to the workload as ``--key`` (compile_model/compile_mode become ``--compile``).
WORKLOAD_FLAGS = ("num_samples", "batch_size", "warmup_batches", "resolution", "precision", "memory", "pipeline",
                  "queue_depth", "preprocess", "d2h", "seed")


@dataclass
class PlannedRun:
    """One run. ViT runs have one ``gpu`` and ``numa`` node and their ``test`` settings; distributed runs
    (``kind`` ddp/partition) have ``world_size`` ranks on ``gpus`` (none in CPU mode), bound per rank to
    ``numa_nodes`` (empty: unbound), and their kind's settings in ``test``."""

    name: str
    job: int
    gpu: int | None
    numa: int | None
    model: str
    variant: str | None
    test: dict[str, Any]
    skip: str | None = None          # why it cannot run here (None: it runs)
    placement: str = "n/a"           # local | remote | unknown (the GPU's node vs the bound node) | n/a (CPU)
    bind: bool = False               # bound with numactl (distributed: each rank)
    command: list[str] = field(default_factory=list)
    kind: str = "vit"
    world_size: int = 1
    gpus: list[int] = field(default_factory=list)
    numa_nodes: list[int] = field(default_factory=list)
    iterations: int | None = None    # distributed: measured steps or batches
    script: str = ""

    @property
    def measured_batches(self) -> int:
        if self.iterations is not None:
            return self.iterations
        return -(-self.test["num_samples"] // self.test["batch_size"])

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "job": self.job, "gpu": self.gpu, "numa": self.numa, "model": self.model,
               "variant": self.variant, "placement": self.placement, "bind": self.bind,
               "measured_batches": self.measured_batches, "test": self.test, "skip": self.skip,
               "command": self.command}
        if self.kind != "vit":
            out = {"kind": self.kind, **out, "world_size": self.world_size, "gpus": self.gpus,
                   "numa_nodes": self.numa_nodes}
            out["settings"] = out.pop("test")
        return out


@dataclass
class Study:
    """The runs of one experiment (the jobs of a multirun that share an experiment name)."""

    experiment: str
    jobs: list[Job]
    runs: list[PlannedRun]
    machine: Machine
    notes: list[str]
    dir: Path

    @property
    def reports(self) -> Path:
        return self.dir / "nsys_reports"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def cfg(self) -> dict[str, Any]:
        """Study-wide settings (output folder, resume, analyze, ...) come from the first job."""
        return self.jobs[0].cfg


def report_name(gpu: int, numa: int, model: str, variant: str | None) -> str:
    return f"{REPORT_PREFIX}_gpu{gpu}_numa{numa}_{model}" + (f"_{variant}" if variant else "")


def default_script() -> Path:
    return dist.workloads_dir() / "vit_pipeline.py"


def workload_args(run: PlannedRun, cfg: dict[str, Any]) -> list[str]:
    test = run.test
    args = ["--model", run.model, "--device", cfg["hardware"]["device"], "--gpu", str(run.gpu),
            "--numa", str(run.numa), "--backend", cfg["workload"]["backend"]]
    if run.variant:
        args += ["--variant", run.variant]
    for key in WORKLOAD_FLAGS:
        args += [f"--{key.replace('_', '-')}", str(test[key])]
    args += ["--compile", test["compile_mode"] if test["compile_model"] else "none"]
    return args + list(cfg["workload"]["extra_args"])


def skip_reason(machine: Machine, device: str, gpu: int, numa: int, numactl: Any) -> tuple[str | None, bool]:
    """Why a run on (gpu, numa) cannot be made here (None when it can), and whether numactl binds it."""
    if numa not in machine.numa_nodes:
        return f"NUMA node {numa} does not exist here (nodes: {_list(machine.numa_nodes)})", False
    if numa not in machine.cpu_nodes:
        return f"NUMA node {numa} has no CPUs to bind to (nodes with CPUs: {_list(machine.cpu_nodes)})", False
    if device == "cpu":
        if gpu != 0:
            return f"CPU mode has no GPUs: only the nominal gpu0 runs, not gpu{gpu}", False
    elif machine.gpus is None:
        return f"no GPU found here ({machine.gpu_source})", False
    elif machine.gpu(gpu) is None:
        found = _list([g.index for g in machine.gpus]) or "none"
        return f"GPU {gpu} does not exist here (GPUs: {found}; from {machine.gpu_source})", False
    if numactl is False:
        return None, False
    if machine.numactl is None:
        if numactl is True:
            return "numactl is not installed (hardware.numactl=true requires it)", False
        if len(machine.numa_nodes) > 1:
            return f"numactl is not installed: cannot bind the run to NUMA node {numa}", False
        return None, False  # one node: every CPU and all memory are on it anyway
    return None, True


def _list(values: list[int]) -> str:
    return ", ".join(map(str, values))


def placement(machine: Machine, device: str, gpu: int, numa: int) -> str:
    if device == "cpu":
        return "n/a"
    found = machine.gpu(gpu)
    if found is None or found.numa_node is None:
        return "unknown"
    return "local" if found.numa_node == numa else "remote"


def command(run: PlannedRun, cfg: dict[str, Any], machine: Machine, reports: Path, nsys: str) -> list[str]:
    device = cfg["hardware"]["device"]
    trace = cfg["nsys"]["trace"] or ("cuda,nvtx,osrt" if device == "cuda" else "nvtx,osrt")
    argv = [machine.numactl, f"--cpunodebind={run.numa}", f"--membind={run.numa}"] if run.bind else []
    argv += [nsys, "profile", "-t", trace, *cfg["nsys"]["extra_args"], "--force-overwrite", "true",
             "-o", str(reports / run.name)]
    run.script = cfg["workload"]["script"] or str(default_script())
    argv += [cfg["workload"]["python"] or sys.executable, run.script, *workload_args(run, cfg),
             "--out-meta", str(reports / f"{run.name}.meta.json")]
    return [str(a) for a in argv]


def notes_for(machine: Machine, device: str, runs: list[PlannedRun]) -> list[str]:
    notes = []
    vit = [r for r in runs if r.kind == "vit"]
    if len(machine.numa_nodes) == 1 and vit:
        notes.append(f"remote placement could not be tested: this machine has one NUMA node ({machine.numa_nodes[0]}),"
                     " so every run's CPUs and memory are on the same node")
    if len(machine.numa_nodes) == 1 and any(r.bind and r.world_size > 1 for r in runs):
        notes.append(f"one NUMA node ({machine.numa_nodes[0]}): binding each rank to its own node put every rank on "
                     "the same node, so the runs with and without binding differ only in numactl")
    if machine.numactl is None and any(r.skip is None for r in vit):
        notes.append("numactl is not installed: runs were not bound to a NUMA node"
                     + (" (one node: binding would change nothing)" if len(machine.numa_nodes) == 1 else ""))
    if device == "cuda" and machine.gpus and all(g.numa_node is None for g in machine.gpus):
        notes.append("the GPUs' NUMA node is unknown (sysfs numa_node is -1 or missing): local and remote "
                     "placement cannot be told apart")
    skipped = sorted({r.skip for r in runs if r.skip})
    notes.extend(f"skipped: {reason}" for reason in skipped)
    return notes


def study_dir(cfg: dict[str, Any], stamp: str) -> Path:
    """``<output_dir>/<experiment>/<date>/<time>`` (``stamp`` is ``<date>/<time>``), or the folder to resume."""
    if cfg.get("resume"):
        return Path(cfg["resume"]).expanduser().absolute()
    return (Path(cfg["output_dir"]).expanduser() / cfg["experiment_name"] / stamp).absolute()


def plan(jobs: list[Job], machine: Machine, nsys: str, stamp: str) -> list[Study]:
    """One :class:`Study` per experiment name among ``jobs``, runs in job, GPU, node, model, variant order.
    ``stamp`` (``<date>/<time>``) names new study folders."""
    studies: dict[str, Study] = {}
    for job in jobs:
        cfg = job.cfg
        hw = cfg["hardware"]
        if job.experiment not in studies:
            studies[job.experiment] = Study(job.experiment, [], [], machine, [], study_dir(cfg, stamp))
        study = studies[job.experiment]
        study.jobs.append(job)
        if dist.kind_of(cfg) is not None:
            study.runs.extend(dist.plan_job(job, machine, nsys, study.reports))
            continue
        for gpu in hw["gpu_ids"]:
            for numa in hw["numa_nodes"]:
                skip, bind = skip_reason(machine, hw["device"], gpu, numa, hw["numactl"])
                for model in cfg["models"]:
                    for variant in cfg["variants"]:
                        name = "_".join(p for p in (variant["name"], job.tag) if p) or None
                        run = PlannedRun(report_name(gpu, numa, model, name), job.index, gpu, numa, model, name,
                                         {**cfg["test"], **variant["test"]}, skip,
                                         placement(machine, hw["device"], gpu, numa), bind)
                        run.command = command(run, cfg, machine, study.reports, nsys)
                        study.runs.append(run)
    for study in studies.values():
        seen: dict[str, PlannedRun] = {}
        for run in study.runs:
            if run.name in seen:
                raise ConfigError(f"two runs of {study.experiment} would write the same report {run.name}: give "
                                  "the variants different names, or sweep a setting that changes the run")
            seen[run.name] = run
        study.notes = notes_for(machine, study.cfg["hardware"]["device"], study.runs)
    return list(studies.values())
