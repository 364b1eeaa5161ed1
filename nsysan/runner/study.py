"""Run the planned runs of a study, one at a time, and keep its record.

The study folder: ``nsys_reports/`` (``<name>.nsys-rep`` and the workload's sidecar ``<name>.meta.json`` of every
run that succeeded), ``logs/`` (``<name>.log`` per run with its command and output; what a failed run left, moved
out of ``nsys_reports/`` so that analyses only see good runs; ``runner.log``), ``results.json`` (every run with
its status, reason, command and times, rewritten atomically after each run) and ``experiment_summary.json``.

A failure, a timeout or a crash of one run is recorded and the next run starts. Ctrl-C, SIGTERM or SIGHUP stop
the current run (nsys and the workload), record it as ``interrupted`` and end the study; ``--resume`` goes on.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nsysan import host
from nsysan.errors import NsysanError
from nsysan.runner.dist import BOUND_NODE_ENV
from nsysan.runner.plan import PlannedRun, Study

OK, FAILED, TIMEOUT, SKIPPED, INTERRUPTED, PENDING = "ok", "failed", "timeout", "skipped", "interrupted", "pending"
RESULTS, SUMMARY = "results.json", "experiment_summary.json"
#: The one-line error of a workload (or of the per-rank NUMA launcher) that could not run as configured.
WORKLOAD_ERROR = r"^(vit_pipeline|ddp_train|partition|numa_bind): error: "
Message = Callable[[str], None]


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, renamed into place."""
    host.write_atomic(path, (json.dumps(data, indent=1, default=str) + "\n").encode())


def read_results(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / RESULTS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise NsysanError(f"{folder / RESULTS}: unreadable ({e})") from None
    return data if isinstance(data, dict) else None


def last_error(log: Path) -> str:
    """The most telling line of a run's log: the workload's error, else a Python exception's last line, else
    nsys's last error line (never the command line or nsys's report paths, which may hold any word)."""
    from nsysan.host import last_message

    try:
        text = log.read_bytes()[-200_000:].decode(errors="replace")
    except OSError:
        return ""
    lines = [" ".join(line.split()) for line in re.split(r"[\r\n]+", text)]
    lines = [line for line in lines if line and not line.startswith("$ ")
             and not re.match(r"^(Generated:|Generating '|\[\d+/\d+\] \[|/\S+\.(nsys-rep|qdstrm|sqlite)$)", line)]
    lines = [re.sub(r"^\[(default)?rank\d+\]:\s*", "", line) for line in lines]  # torchrun's per-rank prefix
    for pattern in (WORKLOAD_ERROR, r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b[^:]*:",
                    r"^[A-Za-z_][\w.]*(Error|Exception)$"):
        hits = [line for line in lines if re.match(pattern, line)]
        if hits:
            found = hits[-1]
            return found if len(found) <= 300 else found[:297] + "..."
    return last_message("\n".join(lines))


class Runner:
    """Executes one study. ``message`` gets progress lines (the CLI prints them on stderr)."""

    def __init__(self, study: Study, *, nsys: dict[str, Any], message: Message, argv: list[str],
                 multirun: bool) -> None:
        self.study, self.nsys, self.say_cb = study, nsys, message
        self.argv, self.multirun = argv, multirun
        self.jobs = {job.index: job for job in study.jobs}
        self.records: dict[str, dict[str, Any]] = {}
        self.previous: dict[str, dict[str, Any]] = {}
        self.created = now()
        self.interrupted = False

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.say_cb(text)
        try:
            with open(self.study.logs / "runner.log", "a") as f:
                f.write(f"{now()} {text}\n")
        except OSError:
            pass

    def load_previous(self) -> None:
        data = read_results(self.study.dir)
        if data is None:
            return
        if data.get("experiment") not in (None, self.study.experiment):
            raise NsysanError(f"{self.study.dir}: holds study {data.get('experiment')!r}, not "
                                f"{self.study.experiment!r}")
        self.created = data.get("created") or self.created
        self.previous = {r["name"]: r for r in data.get("runs", []) if isinstance(r, dict) and "name" in r}

    def done_before(self, run: PlannedRun) -> bool:
        old = self.previous.get(run.name)
        return bool(old and old.get("status") == OK and (self.study.reports / f"{run.name}.nsys-rep").is_file()
                    and (self.study.reports / f"{run.name}.meta.json").is_file())

    def record(self, run: PlannedRun, **fields: Any) -> dict[str, Any]:
        rec = self.records.setdefault(run.name, {
            **{k: v for k, v in run.to_dict().items() if k not in ("skip",)},
            "status": PENDING, "reason": None, "report": None, "sidecar": None,
            "log": str(self.study.logs / f"{run.name}.log"), "returncode": None, "seconds": None,
            "samples_per_s": None, "started": None, "finished": None, "resumed": False, "attempts": 0})
        rec.update(fields)
        return rec

    def results(self) -> dict[str, Any]:
        runs = list(self.records.values())
        runs += [r for name, r in self.previous.items() if name not in self.records]  # kept from an older plan
        return {"format": 1, "experiment": self.study.experiment, "study_dir": str(self.study.dir),
                "created": self.created, "updated": now(), "argv": self.argv, "multirun": self.multirun,
                "nsys": self.nsys, "machine": self.study.machine.to_dict(),
                "jobs": [{"index": j.index, "overrides": j.overrides, "swept": j.swept, "config": j.cfg}
                         for j in self.study.jobs],
                "runs": runs}

    def save(self) -> None:
        write_json(self.study.dir / RESULTS, self.results())

    # -- running ------------------------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        study = self.study
        for folder in (study.reports, study.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.load_previous()
        for run in study.runs:
            if run.skip:
                self.record(run, status=SKIPPED, reason=run.skip)
            elif self.done_before(run):
                self.record(run, **{k: v for k, v in self.previous[run.name].items()
                                    if k in ("status", "report", "sidecar", "returncode", "seconds",
                                             "samples_per_s", "started", "finished", "attempts")}, resumed=True)
            else:
                self.record(run, attempts=self.previous.get(run.name, {}).get("attempts", 0))
        self.save()
        for note in study.notes:
            self.say(f"note: {note}")
        todo = [r for r in study.runs if self.records[r.name]["status"] == PENDING]
        resumed = sum(1 for r in self.records.values() if r["resumed"])
        self.say(f"{study.experiment}: {len(study.runs)} run(s) planned, {len(todo)} to run"
                 + (f", {resumed} done before" if resumed else "")
                 + (f", {len(study.runs) - len(todo) - resumed} skipped" if len(study.runs) - len(todo) - resumed
                    else "") + f" -> {study.dir}")
        try:
            with host.terminations_interrupt():
                for number, run in enumerate(todo, 1):
                    self.say(f"[{number}/{len(todo)}] {run.name}: running"
                             + (f" (timeout {self.timeout(run):g} s)" if self.timeout(run) else ""))
                    try:
                        self.run_one(run)
                    except Exception as e:  # a bug or a full disk in the runner itself: still only this run
                        self.record(run, status=FAILED, reason=f"runner error: {type(e).__name__}: {e}",
                                    finished=now(), seconds=self.records[run.name]["seconds"] or 0.0)
                    rec = self.records[run.name]
                    detail = (f", {rec['samples_per_s']} samples/s" if rec["status"] == OK and rec["samples_per_s"]
                              else f": {rec['reason']}" if rec["reason"] else "")
                    self.say(f"[{number}/{len(todo)}] {run.name}: {rec['status']} in {rec['seconds']:.1f} s{detail}")
                    self.save()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP (host.Interrupted)
            self.interrupted = True
            self.say("interrupted: stopped the running nsys and workload; continue with --resume "
                     f"{study.dir}")
        finally:
            self.save()
        summary = self.summary()
        write_json(study.dir / SUMMARY, summary)
        return summary

    def timeout(self, run: PlannedRun) -> float | None:
        return self.jobs[run.job].cfg.get("timeout_s")

    def run_one(self, run: PlannedRun) -> None:
        reports, logs = self.study.reports, self.study.logs
        report, sidecar, log = (reports / f"{run.name}.nsys-rep", reports / f"{run.name}.meta.json",
                                logs / f"{run.name}.log")
        for stale in (report, sidecar, reports / f"{run.name}.qdstrm", reports / f"{run.name}.sqlite"):
            stale.unlink(missing_ok=True)
        rec = self.record(run, status=PENDING, reason=None, started=now(),
                          attempts=self.records[run.name]["attempts"] + 1)
        log.unlink(missing_ok=True)
        # Only numa_bind.py may say a rank is bound: a value inherited from here would be false.
        env = {**{k: v for k, v in os.environ.items() if k != BOUND_NODE_ENV}, "PYTHONUNBUFFERED": "1"}
        try:
            outcome = host.run(run.command, log=log, timeout=self.timeout(run), env=env, grace=host.GRACE_S)
        except OSError as e:
            rec.update(status=FAILED, reason=f"cannot start {run.command[0]}: {e.strerror or e}", seconds=0.0,
                       finished=now())
            return
        except BaseException:
            rec.update(status=INTERRUPTED, reason="interrupted (Ctrl-C or SIGTERM)", finished=now(), seconds=None)
            self.move_aside(run)
            raise
        rec.update(returncode=outcome.returncode, seconds=round(outcome.seconds, 3), finished=now())
        if outcome.timed_out:
            rec.update(status=TIMEOUT, reason=f"timed out after {self.timeout(run):g} s: nsys and the workload "
                                              "were stopped (raise timeout_s)")
        elif not report.is_file():
            qdstrm = [p.name for p in reports.glob(f"{run.name}*.qdstrm")]
            why = last_error(log)
            rec.update(status=FAILED, reason=(
                f"nsys wrote no report, only {qdstrm[0]}: its importer (QdstrmImporter) failed; see nsysan doctor"
                if qdstrm else f"nsys wrote no report (exit {outcome.returncode})" + (f": {why}" if why else "")))
        elif not sidecar.is_file():
            why = last_error(log)
            rec.update(status=FAILED, reason=f"the workload did not finish (exit {outcome.returncode})"
                       + (f": {why}" if why else ""))
        else:
            meta = self.annotate(run, sidecar, outcome.seconds)
            rec.update(status=OK, report=str(report), sidecar=str(sidecar), samples_per_s=meta.get("samples_per_s"),
                       reason=None if not outcome.returncode else f"nsys exited {outcome.returncode}")
        if rec["status"] != OK:
            self.move_aside(run)

    def annotate(self, run: PlannedRun, sidecar: Path, seconds: float) -> dict[str, Any]:
        """Add the runner's side (nsys, binding, the study) to the workload's sidecar, as nested fields."""
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return {}
        job = self.jobs[run.job]
        meta.setdefault("versions", {})["nsys"] = self.nsys.get("version")
        meta["run"] = {"experiment": self.study.experiment, "name": run.name, "job": run.job,
                       "overrides": job.overrides, "swept": job.swept, "numactl": run.bind,
                       "placement": run.placement, "command": run.command, "nsys": self.nsys,
                       "timeout_s": self.timeout(run), "seconds": round(seconds, 3), "study_dir": str(self.study.dir)}
        if run.kind != "vit":
            meta["run"].update(kind=run.kind, world_size=run.world_size, gpus=run.gpus, rank_numa_nodes=run.numa_nodes)
        write_json(sidecar, meta)
        return meta

    def move_aside(self, run: PlannedRun) -> None:
        """Move what a failed run left in nsys_reports/ to logs/, so analyses of the study see good runs only."""
        for path in self.study.reports.glob(f"{run.name}.*"):
            if path.name.startswith(f"{run.name}.") and not path.name.endswith(".tmp"):
                try:
                    shutil.move(str(path), self.study.logs / path.name)
                except OSError:
                    pass

    # -- summary ----------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        runs = list(self.records.values())
        counts = {s: sum(r["status"] == s for r in runs) for s in (OK, FAILED, TIMEOUT, SKIPPED, INTERRUPTED,
                                                                      PENDING)}
        counts["planned"] = len(runs)
        counts["resumed"] = sum(r["resumed"] for r in runs)
        runnable = len(runs) - counts[SKIPPED]
        machine = self.study.machine
        nodes_ok = sorted({n for r in runs if r["status"] == OK for n in _nodes(r)})
        return {
            "experiment": self.study.experiment, "study_dir": str(self.study.dir), "created": self.created,
            "finished": now(), "interrupted": self.interrupted, "counts": counts,
            "success_rate_pct": round(100 * counts[OK] / runnable, 1) if runnable else None,
            "remote_placement_tested": len(machine.numa_nodes) > 1 and len(nodes_ok) > 1,
            "notes": self.study.notes,
            "models": list(dict.fromkeys(r["model"] for r in runs)),
            "gpus": sorted({g for r in runs for g in _gpus(r)}),
            "numa_nodes": sorted({n for r in runs for n in _nodes(r)}),
            "variants": list(dict.fromkeys(r["variant"] for r in runs)),
            "skipped": [{"name": r["name"], "reason": r["reason"]} for r in runs if r["status"] == SKIPPED],
            "failures": [{"name": r["name"], "status": r["status"], "reason": r["reason"], "log": r["log"]}
                         for r in runs if r["status"] in (FAILED, TIMEOUT, INTERRUPTED)],
            "samples_per_s": {r["name"]: r["samples_per_s"] for r in runs if r["status"] == OK},
            "machine": machine.to_dict(), "nsys": self.nsys,
        }


def _gpus(record: dict[str, Any]) -> list[int]:
    """The GPUs of a run record: ViT's one ``gpu``, a distributed run's ``gpus`` (none in CPU mode)."""
    return record["gpus"] if "gpus" in record else [record["gpu"]]


def _nodes(record: dict[str, Any]) -> list[int]:
    """The NUMA nodes a run was bound to (a distributed run's per-rank nodes; none when unbound)."""
    return record["numa_nodes"] if "numa_nodes" in record else [record["numa"]]
