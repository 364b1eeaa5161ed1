"""``nsysan run``: run a study (Hydra overrides in, a study folder out).

Imports only what runs a study (typer, rich, hydra, nsysan's nsys finder), so that it also works where
nsysan's analysis dependencies are not installed.
"""
from __future__ import annotations

import datetime
import json
import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from nsysan.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USAGE, EXIT_USER_ERROR, NsysanError
from nsysan.runner import study as study_mod
from nsysan.runner.config import ConfigError, compose_jobs, experiments, normalize
from nsysan.runner.plan import Study, plan, study_dir

PLAN_COLUMNS = ("#", "name", "gpu", "numa", "model", "variant", "placement", "numactl", "batches", "action")
RESULT_COLUMNS = ("name", "status", "seconds", "samples_per_s", "reason")
FLAG_OVERRIDES = ("resume=", "dry_run=", "+resume=", "+dry_run=")
#: Left out first when a table does not fit the terminal (the name, status and reason stay).
OPTIONAL_COLUMNS = ("variant", "model", "batches", "numactl", "placement", "gpu", "numa", "samples_per_s")


def message(text: str) -> None:
    typer.echo(f"nsysan run: {text}", err=True)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...], title: str) -> str:
    from nsysan.render import rows_table, terminal_width

    return rows_table(rows, columns, title=title, width=terminal_width(), drop_first=OPTIONAL_COLUMNS, whole=("name",))


def _saved_argv(folder: Path) -> tuple[list[str], bool] | None:
    data = study_mod.read_results(folder)
    if data is None:
        return None
    return [a for a in data.get("argv") or [] if not a.startswith(FLAG_OVERRIDES)], bool(data.get("multirun"))


def _stamp(jobs: list, base: datetime.datetime) -> str:
    """``<date>/<time>`` naming study folders that do not exist yet."""
    stamp = base.strftime("%Y-%m-%d/%H-%M-%S")
    for suffix in ["", *[f"-{i}" for i in range(1, 100)]]:
        if not any(study_dir(j.cfg, stamp + suffix).exists() for j in jobs if not j.cfg.get("resume")):
            return stamp + suffix
    return stamp + f"-{base.microsecond}"


def _ids(values: list[int]) -> str:
    return ",".join(map(str, values)) or "-"


def plan_rows(study: Study, done: set[str]) -> list[dict[str, Any]]:
    """One row per run; a distributed run's GPUs and NUMA nodes are its ranks' (``-``: CPU mode, unbound)."""
    return [{"#": i, "name": r.name, "gpu": r.gpu if r.kind == "vit" else _ids(r.gpus),
             "numa": r.numa if r.kind == "vit" else _ids(r.numa_nodes), "model": r.model, "variant": r.variant,
             "placement": r.placement, "numactl": "yes" if r.bind else "no", "batches": r.measured_batches,
             "action": f"skip: {r.skip}" if r.skip else "done (resume)" if r.name in done else "run"}
            for i, r in enumerate(study.runs, 1)]


def run_study_command(args: list[str], *, multirun: bool = False, dry_run: bool = False,
                      resume: Path | None = None, show_config: bool = False, fmt: str = "table") -> int:
    """Everything ``nsysan run`` does; returns the exit code. Data goes to stdout, messages to stderr."""
    if fmt not in ("table", "json"):
        raise ConfigError(f"--format must be table or json, not {fmt!r}")
    overrides, multirun, resume_dir = _overrides(args, resume, multirun)
    jobs = compose_jobs(overrides, multirun=multirun)
    if show_config:
        from omegaconf import OmegaConf

        for job in jobs:
            typer.echo(f"# job {job.index}: {shlex.join(job.overrides)}\n" + OmegaConf.to_yaml(job.cfg))
        return 0
    dry_run = dry_run or any(bool(j.cfg.get("dry_run")) for j in jobs)

    from nsysan.host import discover

    first = jobs[0].cfg
    nsys_path, nsys_info = _nsys(first["nsys"]["path"], dry_run)
    device = "cuda" if any(j.cfg["hardware"]["device"] == "cuda" for j in jobs) else "cpu"
    machine = discover(gpus=device == "cuda", python=first["workload"]["python"])
    studies = plan(jobs, machine, nsys_path, _stamp(jobs, datetime.datetime.now()))
    if resume_dir is not None and len(studies) > 1:
        raise ConfigError("--resume continues one study, but these overrides make several experiments")
    if dry_run:
        _show_plan(studies, nsys_info, fmt)
        return 0
    summaries = _execute(studies, nsys_path, nsys_info, overrides, multirun, fmt)
    if fmt == "json":
        typer.echo(json.dumps([s for _, s in summaries], indent=1, default=str))
    for note in {n for _, s in summaries for n in s["notes"] if n.startswith("remote placement")}:
        message(note)
    return _exit_code(summaries)


def _overrides(args: list[str], resume: Path | None, multirun: bool) -> tuple[list[str], bool, Path | None]:
    """The Hydra overrides to compose, with ``--resume`` folded in: resuming with no overrides of one's own
    repeats the study's saved ones (and its multirun flag)."""
    overrides = normalize(list(args))
    resume_arg = [a.split("=", 1)[1] for a in overrides if a.startswith(("resume=", "+resume="))]
    if resume is not None:
        overrides = [a for a in overrides if not a.startswith(("resume=", "+resume="))] + [f"resume={resume}"]
    resume_dir = Path(str(resume)) if resume is not None else Path(resume_arg[-1]) if resume_arg else None
    if resume_dir is None or resume_dir.as_posix() in ("null", "None"):
        return overrides, multirun, resume_dir
    if not resume_dir.is_dir():
        raise NsysanError(f"--resume {resume_dir}: no such study folder")
    if not [a for a in overrides if not a.startswith(FLAG_OVERRIDES)]:
        saved = _saved_argv(resume_dir)
        if saved is None:
            raise NsysanError(f"--resume {resume_dir}: no {study_mod.RESULTS} in it (not a study folder?)")
        saved_args, multirun = saved
        overrides = saved_args + [f"resume={resume_dir}"]
        message(f"resuming {resume_dir} with {shlex.join(saved_args) or 'the defaults'}")
    return overrides, multirun, resume_dir


def _nsys(configured: str | None, dry_run: bool) -> tuple[str, dict[str, Any]]:
    """The nsys to profile with, and how the results describe it; a dry run shows `nsys` when there is none."""
    from nsysan.nsys_tool import NsysNotFoundError, find_nsys

    try:
        tool = find_nsys(configured)
    except NsysNotFoundError as e:
        if not dry_run:
            raise
        message(f"{e} (shown as `nsys` below)")
        return "nsys", {"path": None, "version": None, "source": None}
    return str(tool.path), {"path": str(tool.path), "version": str(tool.version), "source": tool.source}


def _show_plan(studies: list[Study], nsys_info: dict[str, Any], fmt: str) -> None:
    out = []
    for study in studies:
        previous = study_mod.read_results(study.dir) if study.dir.is_dir() else None
        done = {r["name"] for r in (previous or {}).get("runs", []) if r.get("status") == study_mod.OK
                and (study.reports / f"{r['name']}.nsys-rep").is_file()}
        for note in study.notes:
            message(f"note: {note}")
        if fmt == "json":
            out.append({"experiment": study.experiment, "study_dir": str(study.dir), "notes": study.notes,
                        "runs": [{**r.to_dict(), "done": r.name in done} for r in study.runs]})
            continue
        runnable = sum(1 for r in study.runs if not r.skip and r.name not in done)
        typer.echo(_table(plan_rows(study, done), PLAN_COLUMNS,
                          f"{study.experiment}: {len(study.runs)} planned, {runnable} to run -> {study.dir} "
                          "(dry run: nothing written)"), nl=False)
        typer.echo("commands:")
        for r in study.runs:
            # A skipped run's command too: on a machine without the GPUs it shows what would run there.
            typer.echo(f"  {r.name}: " + (f"(skipped: {r.skip}) " if r.skip else "") + shlex.join(r.command))
    if fmt == "json":
        typer.echo(json.dumps({"dry_run": True, "nsys": nsys_info, "studies": out}, indent=1, default=str))


def _execute(studies: list[Study], nsys_path: str, nsys_info: dict[str, Any], overrides: list[str],
             multirun: bool, fmt: str) -> list[tuple[study_mod.Runner, dict[str, Any]]]:
    """Runs the studies one after another (and analyses each when asked); stops after an interrupted one."""
    summaries = []
    for study in studies:
        _check_workload(study)
        runner = study_mod.Runner(study, nsys=nsys_info, message=message, argv=overrides, multirun=multirun)
        summary = runner.execute()
        if fmt == "table":
            typer.echo(_table(list(runner.records.values()), RESULT_COLUMNS, f"{summary['experiment']}: "
                              f"{summary['counts']['ok']} of {summary['counts']['planned']} ok -> "
                              f"{summary['study_dir']}"), nl=False)
        if study.cfg.get("analyze") and not runner.interrupted:
            _analyse(study, summary, nsys_path, fmt)
        summaries.append((runner, summary))
        if runner.interrupted:
            break
    return summaries


def _analyse(study: Study, summary: dict[str, Any], nsys_path: str, fmt: str) -> None:
    from nsysan.runner.analyze import LATENCY_COLUMNS, analyze

    info, table = analyze(study, nsys_path, message)
    summary["analysis"] = info
    study_mod.write_json(study.dir / study_mod.SUMMARY, summary)
    if info.get("skipped"):
        message(info["skipped"])
    if table is not None and not table.is_empty() and fmt == "table":
        from nsysan.render import table as render_table
        from nsysan.render import terminal_width

        typer.echo(render_table(table, title=f"{study.experiment}: NVTX ranges by model (ms, warm-up "
                                "excluded)", columns=LATENCY_COLUMNS, width=terminal_width()), nl=False)


def _exit_code(summaries: list[tuple[study_mod.Runner, dict[str, Any]]]) -> int:
    if any(r.interrupted for r, _ in summaries):
        return EXIT_INTERRUPTED
    ok = sum(s["counts"]["ok"] for _, s in summaries)
    bad = sum(s["counts"][k] for _, s in summaries for k in ("failed", "timeout"))
    if ok == 0:
        message("no run succeeded" if bad else "nothing ran: every planned run was skipped")
        return EXIT_USER_ERROR
    return EXIT_PARTIAL if bad else 0


def _check_workload(study: Study) -> None:
    for script in dict.fromkeys(r.script for r in study.runs if not r.skip):
        if not Path(script).is_file():
            raise NsysanError(f"workload not found: {script} (set workload.script=PATH)")


def run(
    ctx: typer.Context,
    multirun: Annotated[bool, typer.Option("--multirun", "-m", help="Sweep: one job per combination of "
                                           "comma-separated override values (Hydra's multirun).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print every planned run and its command; run "
                                          "and write nothing.")] = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this study folder: runs recorded "
                                                   "ok whose report exists are skipped.", show_default=False)] = None,
    show_config: Annotated[bool, typer.Option("--cfg", help="Print the composed config of each job and exit.")]
    = False,
    list_experiments: Annotated[bool, typer.Option("--list", help="List the shipped experiments and exit.")]
    = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json.")] = "table",
) -> None:
    """Run a study under nsys: Hydra overrides in, reports and results.json out.

    Every combination of hardware.gpu_ids x hardware.numa_nodes x models x variants runs the workload
    (`workloads/vit_pipeline.py`) under numactl and nsys profile; reports go to
    `outputs/<experiment>/<date>/<time>/nsys_reports/pipeline_gpu{G}_numa{N}_vit{P}x{D}x{H}[_{variant}].nsys-rep`.
    Experiments: quick_test, numa_study, scaling_study, compile_study, resolution_study, pipeline_study;
    ddp_study and partition_study run `workloads/ddp_train.py` and `partition.py` under torchrun, one report
    per grid combination (docs/workloads.md). hardware=cpu runs without a GPU.

    Example: nsysan run experiment=quick_test hardware=cpu test.num_samples=50 analyze=true
    """
    try:
        import hydra  # noqa: F401
    except ImportError:
        message("hydra-core is not installed: pip install 'hydra-core>=1.3,<1.4' (or put it on PYTHONPATH)")
        raise typer.Exit(EXIT_USER_ERROR) from None
    try:
        if list_experiments:
            typer.echo("\n".join(experiments()))
            return
        code = run_study_command(list(ctx.args), multirun=multirun, dry_run=dry_run, resume=resume,
                                 show_config=show_config, fmt=fmt)
    except ConfigError as e:
        message(str(e))
        raise typer.Exit(EXIT_USAGE) from None
    except NsysanError as e:
        message(str(e))
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        message("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if code:
        raise typer.Exit(code)


CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def make_app() -> typer.Typer:
    """A Typer app holding only ``run`` (used by ``python -m nsysan.runner``)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(context_settings=CONTEXT)(run)
    return app


def main() -> None:
    make_app()(prog_name="nsysan run")
