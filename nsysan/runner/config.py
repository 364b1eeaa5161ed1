"""Compose the runner's Hydra configs (shipped in :mod:`nsysan.runner.conf`) and expand multirun sweeps.

    jobs = compose_jobs(["experiment=numa_study", "hardware.gpu_ids=[0,1]"])             # one job
    jobs = compose_jobs(["experiment=compile_study", "test.compile_model=true,false"], multirun=True)  # two

Overrides use Hydra's grammar (``key=value``, ``+key=value``, ``group=option``); with ``multirun`` a comma list,
``range()``, ``choice()`` ... sweeps, as Hydra's basic sweeper does: one job per combination. The form
``experiment.KEY=VALUE`` (as some studies write it) is accepted and means ``KEY=VALUE``.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from nsysan.errors import NsysanError

CONF_MODULE = "nsysan.runner.conf"
MODEL_NAME = re.compile(r"^vit(\d+)x(\d+)x(\d+)$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+=-]*(?:_[A-Za-z0-9.+=-]+)*$")
#: Workload settings a ``test`` mapping may hold, with their types.
TEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "num_samples": int, "batch_size": int, "warmup_batches": int, "resolution": int, "precision": str,
    "compile_model": bool, "compile_mode": str, "memory": str, "pipeline": str, "queue_depth": int,
    "preprocess": str, "d2h": str, "seed": int,
}
CHOICES = {"precision": ("bf16", "fp16", "fp32"), "compile_mode": ("default", "reduce-overhead", "max-autotune"),
           "memory": ("pinned", "pageable"), "pipeline": ("sync", "async", "streams"), "preprocess": ("cpu", "gpu"),
           "d2h": ("logits", "enhanced")}
#: Swept keys that do not go into the variant part of report names: they are in the name already
#: (GPU, node, model), make a study of their own (experiment), or do not change what a run measures.
NOT_IN_VARIANT = ("hardware.gpu_ids", "hardware.numa_nodes", "models", "experiment", "experiment_name", "output_dir",
                  "resume", "dry_run", "analyze", "timeout_s", "nsys", "workload.python", "workload.script")


class ConfigError(NsysanError):
    """The overrides or the composed config are wrong (a usage error: exit code 2)."""


@dataclass
class Job:
    """One composed config: ``index`` in the sweep, the overrides that made it, the swept ones (key -> value)."""

    index: int
    overrides: list[str]
    swept: dict[str, str] = field(default_factory=dict)
    cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        return self.cfg["experiment_name"]

    @property
    def tag(self) -> str | None:
        """The swept values that distinguish this job's reports: ``compile_model-true`` (None when none)."""
        from nsysan.runner.dist import keys_in_name

        in_name = keys_in_name(self.cfg) or NOT_IN_VARIANT
        parts = [f"{key.rsplit('.', 1)[-1]}-{slug(value)}" for key, value in self.swept.items()
                 if not any(key == k or key.startswith(k + ".") for k in in_name)]
        return "_".join(parts) or None


def slug(value: str) -> str:
    value = {"True": "true", "False": "false"}.get(value, value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", value).strip("-") or "x"


def normalize(overrides: list[str]) -> list[str]:
    """``experiment.test.num_samples=5`` -> ``test.num_samples=5`` (the experiment's keys are global here)."""
    out = []
    for item in overrides:
        found = re.match(r"^([+~]{0,2})experiment\.(.+)$", item)
        out.append(found[1] + found[2] if found else item)
    return out


def expand(overrides: list[str], multirun: bool) -> list[tuple[list[str], dict[str, str]]]:
    """Job override lists (and their swept values), one per combination of the sweeps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    except HydraException as e:
        raise ConfigError(f"bad override: {_one_line(e)}") from None
    axes: list[list[tuple[str, str | None, str | None]]] = []
    for item in parsed:
        if item.is_sweep_override():
            if not multirun:
                raise ConfigError(f"{item.input_line}: a sweep needs -m/--multirun")
            key = item.get_key_element()
            axes.append([(f"{key}={value}", item.key_or_group, value) for value in item.sweep_string_iterator()])
        else:
            axes.append([(item.input_line, None, None)])
    jobs = []
    for combo in itertools.product(*axes):
        jobs.append(([text for text, _, _ in combo], {k: v for _, k, v in combo if k is not None}))
    return jobs or [([], {})]


def compose_jobs(overrides: list[str], multirun: bool = False) -> list[Job]:
    """Compose and check one config per job."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    expanded = expand(normalize(overrides), multirun)
    jobs = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            for index, (job_overrides, swept) in enumerate(expanded):
                cfg = compose(config_name="config", overrides=job_overrides)
                data = OmegaConf.to_container(cfg, resolve=True)
                jobs.append(Job(index, job_overrides, swept, check(data)))  # type: ignore[arg-type]
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    return jobs


def experiments() -> list[str]:
    """The experiment configs shipped with nsysan."""
    from importlib.resources import files

    folder = files(CONF_MODULE) / "experiment"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 400 else text[:397] + "..."


# -- checks ------------------------------------------------------------------------------------------------------

def _int_list(value: Any, what: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           and v >= 0 for v in value):
        raise ConfigError(f"{what} must be a non-empty list of non-negative integers, not {value!r}")
    return list(dict.fromkeys(value))


def check_test(test: Any, what: str) -> dict[str, Any]:
    if not isinstance(test, dict):
        raise ConfigError(f"{what} must be a mapping of workload settings")
    unknown = [k for k in test if k not in TEST_KEYS]
    if unknown:
        raise ConfigError(f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(TEST_KEYS)}")
    for key, value in test.items():
        wanted = TEST_KEYS[key]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise ConfigError(f"{what}.{key} must be {getattr(wanted, '__name__', wanted)}, not {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{what}.{key} must be one of {', '.join(CHOICES[key])}, not {value!r}")
        if wanted is int and value < (0 if key in ("warmup_batches", "seed") else 1):
            raise ConfigError(f"{what}.{key} must be {'>= 0' if key in ('warmup_batches', 'seed') else '>= 1'}")
    return test


def check(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check a composed config; return it with lists de-duplicated. Raises :class:`ConfigError`."""
    name = cfg.get("experiment_name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"experiment_name must be a plain name (letters, digits, _ . -), not {name!r}")
    hw = cfg.get("hardware") or {}
    if hw.get("device") not in ("cuda", "cpu"):
        raise ConfigError(f"hardware.device must be cuda or cpu, not {hw.get('device')!r}")
    hw["gpu_ids"] = _int_list(hw.get("gpu_ids"), "hardware.gpu_ids")
    hw["numa_nodes"] = _int_list(hw.get("numa_nodes"), "hardware.numa_nodes")
    if hw.get("numactl") not in ("auto", True, False):
        raise ConfigError(f"hardware.numactl must be auto, true or false, not {hw.get('numactl')!r}")
    models = cfg.get("models")
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise ConfigError("models must be a non-empty list such as [vit0x0x0, vit32x6x512]")
    for model in models:
        if not isinstance(model, str) or not MODEL_NAME.match(model):
            raise ConfigError(f"model {model!r}: expected vit{{patch}}x{{depth}}x{{dim}}, e.g. vit32x6x512")
    cfg["models"] = list(dict.fromkeys(models))
    check_test(cfg.get("test"), "test")
    variants = cfg.get("variants")
    if not isinstance(variants, list) or not variants:
        raise ConfigError("variants must be a non-empty list of {name: ..., test: {...}}")
    seen = set()
    for i, variant in enumerate(variants):
        if not isinstance(variant, dict) or set(variant) - {"name", "test"}:
            raise ConfigError(f"variants[{i}] must be a mapping with keys name and test")
        vname = variant.get("name")
        if vname is not None and (not isinstance(vname, str) or not SAFE_NAME.match(vname)):
            raise ConfigError(f"variants[{i}].name {vname!r}: use letters, digits and . + = - (and single _)")
        if vname in seen:
            raise ConfigError(f"variant name {vname!r} appears twice")
        seen.add(vname)
        variant["test"] = check_test(variant.get("test") or {}, f"variants[{i}].test")
    timeout = cfg.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ConfigError(f"timeout_s must be a positive number of seconds or null, not {timeout!r}")
    for key in ("nsys", "workload"):
        if not isinstance(cfg.get(key), dict):
            raise ConfigError(f"{key} must be a mapping")
    if cfg["workload"].get("backend") not in ("auto", "torch", "numpy"):
        raise ConfigError("workload.backend must be auto, torch or numpy")
    from nsysan.runner import dist

    kind = cfg["workload"].setdefault("kind", "vit")
    if kind != "vit" and kind not in dist.KINDS:
        raise ConfigError(f"workload.kind must be one of vit, {', '.join(dist.KINDS)}, not {kind!r}")
    if kind in dist.KINDS:
        dist.check(cfg, dist.KINDS[kind])
    for key in ("nsys", "workload"):
        extra = cfg[key].get("extra_args") or []
        if not isinstance(extra, list) or not all(isinstance(a, (str, int, float)) for a in extra):
            raise ConfigError(f"{key}.extra_args must be a list of strings")
        cfg[key]["extra_args"] = [str(a) for a in extra]
    return cfg
