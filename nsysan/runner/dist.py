"""The runner's distributed workload kinds: ``ddp`` (workloads/ddp_train.py) and ``partition``
(workloads/partition.py), each run one torchrun launch of N ranks under one ``nsys profile``.

An experiment of such a kind sets ``workload.kind`` and holds the kind's settings in a block of its name
(``ddp:`` / ``partition:``, defaults in ``conf/<kind>/default.yaml``) and a ``grid:`` of settings to sweep (one
run per combination, in the order written). Each run is::

    nsys profile ... -o <reports>/<name> python -m torch.distributed.run --standalone --nproc_per_node N \\
        [--no-python python workloads/numa_bind.py --nodes A,B --numactl /usr/bin/numactl -- python] \\
        workloads/<script>.py --device ... [--gpus 0,1] --<setting> <value> ... --out-meta <reports>/<name>.meta.json

With ``numa_binding`` every rank execs ``numactl --cpunodebind=X --membind=X`` for its own node: its GPU's NUMA
node (sysfs), or ``hardware.rank_numa_nodes[LOCAL_RANK]``; in CPU mode the nodes with CPUs in turn. Report names
carry every setting that is in them (see :func:`report_name`), so runs of one study never share a name.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsysan.runner.config import ConfigError, Job, slug
from nsysan.host import Machine

LAUNCHER = "numa_bind.py"
#: Set by the launcher for the rank it execs: the node the rank is bound to (the workloads record it).
BOUND_NODE_ENV = "NSYSAN_BOUND_NUMA_NODE"


@dataclass(frozen=True)
class Kind:
    name: str                                        # also the config block holding its settings
    script: str                                      # in workloads/
    settings: dict[str, tuple[type, ...]]            # key -> allowed types (type(None): may be null)
    minimum: dict[str, int]                          # integer settings and their least value
    choices: dict[str, tuple[str, ...]]
    named: tuple[str, ...]                           # settings the report name carries
    measured: str                                    # the setting that counts measured steps/batches


DDP = Kind(
    "ddp", "ddp_train.py",
    {"model": (str,), "world_size": (int, type(None)), "batch_size": (int,), "steps": (int,), "warmup_steps": (int,),
     "precision": (str,), "workers": (int,), "prefetch_factor": (int,), "numa_binding": (bool,),
     "channels_last": (bool,), "lr": (float, int), "seed": (int,)},
    {"world_size": 1, "batch_size": 1, "steps": 1, "warmup_steps": 0, "workers": 0, "prefetch_factor": 1, "seed": 0},
    {"precision": ("fp32", "fp16", "bf16")},
    ("model", "world_size", "batch_size", "precision", "workers", "prefetch_factor", "numa_binding"), "steps")
PARTITION = Kind(
    "partition", "partition.py",
    {"mode": (str,), "layers": (int,), "hidden": (int,), "ffn_multiplier": (int,), "batch_size": (int,),
     "seq_len": (int,), "batches": (int,), "warmup_batches": (int,), "precision": (str,),
     "world_size": (int, type(None)), "numa_binding": (bool,), "seed": (int,)},
    {"layers": 1, "hidden": 1, "ffn_multiplier": 1, "batch_size": 1, "seq_len": 1, "batches": 1, "warmup_batches": 0,
     "world_size": 1, "seed": 0},
    {"mode": ("layerwise", "tensor"), "precision": ("fp32", "fp16", "bf16")},
    ("layers", "hidden", "mode", "world_size", "batch_size", "seq_len", "precision", "numa_binding"), "batches")
KINDS = {kind.name: kind for kind in (DDP, PARTITION)}


def kind_of(cfg: dict[str, Any]) -> Kind | None:
    """The distributed kind of a composed config (None: the ViT pipeline)."""
    return KINDS.get((cfg.get("workload") or {}).get("kind", "vit"))


def keys_in_name(cfg: dict[str, Any]) -> tuple[str, ...] | None:
    """Swept override keys that a distributed kind's report names already show, or that make no other run
    (kept out of the job tag); None for the ViT pipeline. Unlike ViT names, these do not show the GPU ids."""
    from nsysan.runner.config import NOT_IN_VARIANT

    kind = kind_of(cfg)
    if kind is None:
        return None
    return (*(k for k in NOT_IN_VARIANT if k != "hardware.gpu_ids"), *(f"{kind.name}.{key}" for key in kind.named),
            "grid", "hardware.nproc")


# -- checks ------------------------------------------------------------------------------------------------------

def _check_value(kind: Kind, key: str, value: Any, what: str) -> None:
    allowed = kind.settings[key]
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise ConfigError(f"{what} must be {names}, not {value!r}")
    if key in kind.choices and value not in kind.choices[key]:
        raise ConfigError(f"{what} must be one of {', '.join(kind.choices[key])}, not {value!r}")
    if key in kind.minimum and value is not None and value < kind.minimum[key]:
        raise ConfigError(f"{what} must be >= {kind.minimum[key]}, not {value!r}")
    if key == "lr" and not value > 0:
        raise ConfigError(f"{what} must be positive, not {value!r}")


def check(cfg: dict[str, Any], kind: Kind) -> None:
    """Check the kind's settings block, the grid and the hardware keys distributed runs use."""
    settings = cfg.get(kind.name)
    if not isinstance(settings, dict):
        raise ConfigError(f"workload.kind={kind.name} needs a mapping {kind.name}: of settings "
                          f"(conf/{kind.name}/default.yaml)")
    unknown = [k for k in settings if k not in kind.settings]
    missing = [k for k in kind.settings if k not in settings]
    if unknown or missing:
        raise ConfigError(f"{kind.name}: " + "; ".join(
            [f"unknown setting(s) {', '.join(unknown)}"] * bool(unknown) + [f"missing {', '.join(missing)}"]
            * bool(missing)) + f"; known: {', '.join(kind.settings)}")
    for key, value in settings.items():
        _check_value(kind, key, value, f"{kind.name}.{key}")
    grid = cfg.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError("grid must be a mapping of setting -> list of values")
    for key, values in grid.items():
        if key not in kind.settings:
            raise ConfigError(f"grid.{key}: not a {kind.name} setting; known: {', '.join(kind.settings)}")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"grid.{key} is empty: give at least one value (or remove it: ~grid.{key})")
        for value in values:
            _check_value(kind, key, value, f"grid.{key} value")
        grid[key] = list(dict.fromkeys(values))
    cfg["grid"] = grid
    hw = cfg["hardware"]
    nproc = hw.get("nproc")
    if nproc is not None and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
        raise ConfigError(f"hardware.nproc must be a positive integer or null, not {nproc!r}")
    nodes = hw.get("rank_numa_nodes")
    if nodes is not None and (not isinstance(nodes, list) or not nodes or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in nodes)):
        raise ConfigError(f"hardware.rank_numa_nodes must be null or a list of NUMA nodes (one per rank), "
                          f"not {nodes!r}")


# -- runs --------------------------------------------------------------------------------------------------------

def combinations(cfg: dict[str, Any], kind: Kind) -> list[dict[str, Any]]:
    """The settings of every run: the kind's block with each combination of the grid applied."""
    grid = cfg.get("grid") or {}
    keys = list(grid)
    return [{**cfg[kind.name], **dict(zip(keys, values))} for values in itertools.product(*(grid[k] for k in keys))]


def world_size(settings: dict[str, Any], cfg: dict[str, Any]) -> int:
    """The setting, else ``hardware.nproc``, else one rank per GPU of ``hardware.gpu_ids``."""
    hw = cfg["hardware"]
    if settings["world_size"] is not None:
        return settings["world_size"]
    if hw.get("nproc") is not None:
        return hw["nproc"]
    return len(hw["gpu_ids"]) if hw["device"] == "cuda" else 2


def model_name(kind: Kind, settings: dict[str, Any]) -> str:
    return settings["model"] if kind is DDP else f"mlp{settings['layers']}x{settings['hidden']}"


def variant_parts(kind: Kind, settings: dict[str, Any], world: int, grid: dict[str, Any]) -> list[str]:
    """The report name after ``<kind>_<model>_``: the named settings, then grid axes the name would not show."""
    bind = "bind" if settings["numa_binding"] else "nobind"
    s = settings
    if kind is DDP:
        parts = [f"w{world}", f"b{s['batch_size']}", s["precision"], f"workers{s['workers']}"]
        if s["workers"] > 0:  # without workers there is no prefetching
            parts.append(f"pf{s['prefetch_factor']}")
        parts.append(bind)
    else:
        parts = [s["mode"], f"w{world}", f"b{s['batch_size']}", f"s{s['seq_len']}", s["precision"], bind]
    extra = [f"{key}-{slug(str(s[key]))}" for key in grid if key not in kind.named]
    return parts + extra


def report_name(kind: Kind, model: str, variant: str) -> str:
    """``ddp_resnet18_w2_b256_bf16_workers4_pf2_bind``, ``partition_mlp16x1024_layerwise_w2_b8_s512_bf16_nobind``."""
    return f"{kind.name}_{model}_{variant}"


def rank_nodes(cfg: dict[str, Any], machine: Machine, gpus: list[int], world: int) -> tuple[list[int] | None, str]:
    """The NUMA node of each rank (None and why when it cannot be told)."""
    hw = cfg["hardware"]
    if hw.get("rank_numa_nodes") is not None:
        nodes = hw["rank_numa_nodes"]
        if len(nodes) < world:
            return None, f"hardware.rank_numa_nodes={nodes} has no node for each of {world} ranks"
        return nodes[:world], ""
    if hw["device"] == "cpu":
        return [machine.cpu_nodes[r % len(machine.cpu_nodes)] for r in range(world)], ""
    nodes = [getattr(machine.gpu(g), "numa_node", None) for g in gpus]
    unknown = [g for g, n in zip(gpus, nodes) if n is None]
    if unknown:
        return None, (f"NUMA binding per rank needs each GPU's NUMA node, unknown for GPU "
                      f"{', '.join(map(str, unknown))} (sysfs): set hardware.rank_numa_nodes=[...]")
    return nodes, ""  # type: ignore[return-value]


def skip_reason(cfg: dict[str, Any], machine: Machine, gpus: list[int], world: int,
                nodes: list[int] | None, why_no_nodes: str, binding: bool) -> str | None:
    hw = cfg["hardware"]
    if hw["device"] == "cuda":
        if len(hw["gpu_ids"]) < world:
            return f"world size {world} needs {world} GPUs, hardware.gpu_ids has {len(hw['gpu_ids'])}"
        if machine.gpus is None:
            return f"no GPU found here ({machine.gpu_source})"
        missing = [g for g in gpus if machine.gpu(g) is None]
        if missing:
            found = ", ".join(str(g.index) for g in machine.gpus) or "none"
            return f"GPU {missing[0]} does not exist here (GPUs: {found}; from {machine.gpu_source})"
    if not binding:
        return None
    if hw["numactl"] is False:
        return "numa_binding needs numactl, but hardware.numactl=false"
    if machine.numactl is None:
        return "numactl is not installed: cannot bind each rank to its NUMA node"
    if nodes is None:
        return why_no_nodes
    absent = [n for n in nodes if n not in machine.cpu_nodes]
    if absent:
        return (f"NUMA node {absent[0]} does not exist here or has no CPUs (nodes with CPUs: "
                f"{', '.join(map(str, machine.cpu_nodes))})")
    return None


def placement(cfg: dict[str, Any], machine: Machine, gpus: list[int], nodes: list[int], binding: bool) -> str:
    """``local`` / ``remote`` (every rank bound to its GPU's node / some rank not), ``unknown``, ``unbound``, or
    ``n/a`` in CPU mode."""
    if cfg["hardware"]["device"] == "cpu":
        return "n/a"
    if not binding:
        return "unbound"
    local = [getattr(machine.gpu(g), "numa_node", None) for g in gpus]
    if any(n is None for n in local) or len(nodes) != len(gpus):
        return "unknown"
    return "local" if local == nodes else "remote"


def workload_args(kind: Kind, settings: dict[str, Any], cfg: dict[str, Any], gpus: list[int],
                  variant: str) -> list[str]:
    args = ["--device", cfg["hardware"]["device"]]
    if gpus:
        args += ["--gpus", ",".join(map(str, gpus))]
    for key, value in settings.items():
        if key == "world_size":  # torchrun's --nproc_per_node
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args + ["--variant", variant, *cfg["workload"]["extra_args"]]


def workloads_dir() -> Path:
    """The workload scripts: ``workloads/`` of the checkout this nsysan runs from, else the copy installed
    with the package (``nsysan/workloads``, see pyproject.toml)."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "workloads"
    return checkout if (checkout / "vit_pipeline.py").is_file() else package / "workloads"


def command(kind: Kind, cfg: dict[str, Any], machine: Machine, nsys: str, reports: Path, name: str,
            world: int, nodes: list[int] | None, binding: bool, args: list[str]) -> tuple[list[str], str]:
    """The run's argv and its workload script."""
    device = cfg["hardware"]["device"]
    trace = cfg["nsys"]["trace"] or ("cuda,nvtx,osrt" if device == "cuda" else "nvtx,osrt")
    python = cfg["workload"]["python"] or sys.executable
    script = cfg["workload"]["script"] or str(workloads_dir() / kind.script)
    argv = [nsys, "profile", "-t", trace, *cfg["nsys"]["extra_args"], "--force-overwrite", "true",
            "-o", str(reports / name), python, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(world)]
    if binding:
        known = ",".join(map(str, nodes)) if nodes else ",".join("?" * world)  # "?": a skipped run's unknown node
        argv += ["--no-python", python, str(workloads_dir() / LAUNCHER), "--nodes", known,
                 "--numactl", machine.numactl or "numactl", "--", python]
    argv += [script, *args, "--out-meta", str(reports / f"{name}.meta.json")]
    return [str(a) for a in argv], script


def plan_job(job: Job, machine: Machine, nsys: str, reports: Path) -> list[Any]:
    """The runs of one job of a distributed kind, one per grid combination (duplicates dropped)."""
    from nsysan.runner.plan import PlannedRun

    cfg = job.cfg
    kind = kind_of(cfg)
    assert kind is not None
    runs: dict[str, PlannedRun] = {}
    for settings in combinations(cfg, kind):
        world = world_size(settings, cfg)
        settings = {**settings, "world_size": world}
        gpus = cfg["hardware"]["gpu_ids"][:world] if cfg["hardware"]["device"] == "cuda" else []
        binding = settings["numa_binding"]
        nodes, why = rank_nodes(cfg, machine, gpus, world) if binding else (None, "")
        model = model_name(kind, settings)
        variant = "_".join([*variant_parts(kind, settings, world, cfg.get("grid") or {}), *filter(None, [job.tag])])
        name = report_name(kind, model, variant)
        if name in runs:  # the same run twice (e.g. prefetch factors without workers)
            continue
        skip = skip_reason(cfg, machine, gpus, world, nodes, why, binding)
        run = PlannedRun(name, job.index, None, None, model, variant, settings, skip,
                         placement(cfg, machine, gpus, nodes or [], binding), bind=binding,
                         kind=kind.name, world_size=world, gpus=gpus, numa_nodes=nodes or [],
                         iterations=settings[kind.measured])
        run.command, run.script = command(kind, cfg, machine, nsys, reports, name, world, nodes, binding,
                                          workload_args(kind, settings, cfg, gpus, variant))
        runs[name] = run
    return list(runs.values())
