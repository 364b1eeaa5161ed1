"""``nsysan run``: Hydra configs and multirun sweeps, the plan (skips of missing NUMA nodes and GPUs), dry runs,
and real studies in CPU mode under nsys: run -> reports -> export -> latency by model, failures isolated,
timeouts that stop everything, resume."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nsysan import host
from nsysan.cli import app as nsysan_app
from nsysan.cli import run as cli_run
from nsysan.host import Gpu, Machine
from nsysan.runner.config import ConfigError, compose_jobs, experiments
from nsysan.runner.plan import plan

STAGES = ("preprocess", "h2d", "forward", "d2h")
#: Small enough for CI: 3 models x 2 measured batches (+1 warm-up) in CPU mode.
QUICK = ["experiment=quick_test", "hardware=cpu", "test.num_samples=20", "test.warmup_batches=1"]

cli = CliRunner()


def _app() -> typer.Typer:
    """``nsysan run`` registered as nsysan.cli will register it (app.add_typer(cli_run.app))."""
    parent = typer.Typer()
    parent.add_typer(cli_run.app)

    @parent.command()
    def other() -> None:  # a second command, so that `run` is a subcommand as in nsysan
        """Another command."""

    return parent


def nsysan_run(*args: str):
    return cli.invoke(_app(), ["run", *args])


def one_node() -> bool:
    return len(host.numa_nodes()[0]) == 1


def fake_machine(gpus: list[Gpu] | None = None, nodes: tuple[int, ...] = (0, 1)) -> Machine:
    return Machine(list(nodes), list(nodes), gpus, "test", "/usr/bin/numactl")


# -- configs, sweeps, plans (no nsys) --------------------------------------------------------------------------

def test_every_experiment_composes_to_its_study():
    sizes = {}
    for name in experiments():
        (job,) = compose_jobs([f"experiment={name}"])
        hw = job.cfg["hardware"]
        sizes[name] = len(hw["gpu_ids"]) * len(hw["numa_nodes"]) * len(job.cfg["models"]) * len(job.cfg["variants"])
    assert sizes == {"quick_test": 3, "numa_study": 48, "scaling_study": 8, "compile_study": 8,
                     "resolution_study": 8, "pipeline_study": 14}


def test_overrides_and_the_experiment_prefix():
    (job,) = compose_jobs(["experiment=numa_study", "hardware.gpu_ids=[0,1]", "experiment.test.num_samples=500"])
    assert job.cfg["hardware"]["gpu_ids"] == [0, 1] and job.cfg["test"]["num_samples"] == 500
    assert job.cfg["hardware"]["numa_nodes"] == [0, 2] and len(job.cfg["models"]) == 6
    (cpu,) = compose_jobs(["experiment=numa_study", "hardware=cpu"])
    assert cpu.cfg["hardware"]["device"] == "cpu" and cpu.cfg["hardware"]["gpu_ids"] == [0, 1, 2, 3]
    for bad in (["test.bogus=1"], ["experiment=nope"], ["models=[vit1x2]"], ["test.precision=fp8"],
                ["test.num_samples=1,2"], ["variants=[{name:a},{name:a}]"]):
        with pytest.raises(ConfigError):
            compose_jobs(bad)


def test_multirun_expands_like_hydra():
    jobs = compose_jobs(["experiment=compile_study", "test.compile_model=true,false",
                         "experiment.hardware.numa_nodes=[0],[2]", "models=[vit32x2x128]",
                         "variants=[{name:null}]"], multirun=True)
    assert [(j.cfg["test"]["compile_model"], j.cfg["hardware"]["numa_nodes"]) for j in jobs] == [
        (True, [0]), (True, [2]), (False, [0]), (False, [2])]
    assert [j.swept for j in jobs][0] == {"test.compile_model": "True", "hardware.numa_nodes": "[0]"}
    assert [j.tag for j in jobs] == ["compile_model-true", "compile_model-true", "compile_model-false",
                                     "compile_model-false"]  # the node is in the name already
    (study,) = plan(jobs, fake_machine([Gpu(0, numa_node=0)], nodes=(0, 2)), "nsys", "d/t")
    assert [r.name for r in study.runs] == [
        "pipeline_gpu0_numa0_vit32x2x128_compile_model-true", "pipeline_gpu0_numa2_vit32x2x128_compile_model-true",
        "pipeline_gpu0_numa0_vit32x2x128_compile_model-false", "pipeline_gpu0_numa2_vit32x2x128_compile_model-false"]
    assert [r.placement for r in study.runs] == ["local", "remote", "local", "remote"]
    assert "--compile" in study.runs[0].command and study.runs[0].command[
        study.runs[0].command.index("--compile") + 1] == "default"
    # Different experiments in one sweep: one study each.
    studies = plan(compose_jobs(["experiment=quick_test,scaling_study", "hardware=cpu"], multirun=True),
                   fake_machine([]), "nsys", "d/t")
    assert [(s.experiment, len(s.runs)) for s in studies] == [("quick_test", 3), ("scaling_study", 8)]


def test_missing_nodes_and_gpus_are_skipped_with_reasons():
    jobs = compose_jobs(["experiment=quick_test", "hardware.gpu_ids=[0,1,7]", "hardware.numa_nodes=[0,1,3]",
                         "models=[vit0x0x0]"])
    gpus = [Gpu(0, "H100", "0000:1b:00.0", numa_node=0), Gpu(1, "H100", "0000:9b:00.0", numa_node=1)]
    (study,) = plan(jobs, fake_machine(gpus), "nsys", "d/t")
    by_name = {r.name: r for r in study.runs}
    assert by_name["pipeline_gpu1_numa0_vit0x0x0"].skip is None
    assert by_name["pipeline_gpu1_numa0_vit0x0x0"].placement == "remote"
    assert by_name["pipeline_gpu1_numa1_vit0x0x0"].placement == "local"
    assert by_name["pipeline_gpu7_numa0_vit0x0x0"].skip.startswith("GPU 7 does not exist here (GPUs: 0, 1")
    assert by_name["pipeline_gpu0_numa3_vit0x0x0"].skip == "NUMA node 3 does not exist here (nodes: 0, 1)"
    assert by_name["pipeline_gpu0_numa0_vit0x0x0"].command[:3] == ["/usr/bin/numactl", "--cpunodebind=0",
                                                                   "--membind=0"]
    assert not any("remote placement" in n for n in study.notes)
    # One node and no numactl: runs are not bound, and the study says remote placement was not tested.
    single = Machine([0], [0], gpus, "test", None)
    (study,) = plan(jobs, single, "nsys", "d/t")
    assert study.runs[0].command[0] == "nsys" and not study.runs[0].bind
    assert any(n.startswith("remote placement could not be tested") for n in study.notes)
    # Several nodes and no numactl: a run cannot be bound, so it is skipped rather than run unbound.
    (study,) = plan(jobs, Machine([0, 1], [0, 1], gpus, "test", None), "nsys", "d/t")
    assert study.runs[0].skip == "numactl is not installed: cannot bind the run to NUMA node 0"
    # No GPU at all.
    (study,) = plan(jobs, fake_machine(None), "nsys", "d/t")
    assert all(r.skip and r.skip.startswith(("no GPU found", "NUMA node 3")) for r in study.runs)


def test_dry_run_prints_every_run_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = nsysan_run("experiment=numa_study", "hardware=cpu", f"output_dir={out}", "--dry-run")
    assert result.exit_code == 0, result.output
    (job,) = compose_jobs(["experiment=numa_study", "hardware=cpu"])
    for gpu in job.cfg["hardware"]["gpu_ids"]:
        for numa in job.cfg["hardware"]["numa_nodes"]:
            for model in job.cfg["models"]:
                name = f"pipeline_gpu{gpu}_numa{numa}_{model}"
                assert re.search(rf"^\s*\d+\s+{name}\s", result.stdout, re.M), name  # in the table
                assert f"\n  {name}: " in result.stdout  # and its command
    assert "CPU mode has no GPUs" in result.stdout
    assert not out.exists()
    as_json = json.loads(nsysan_run("experiment=quick_test", "hardware=cpu", f"output_dir={out}", "--dry-run",
                                    "-f", "json").stdout)
    assert [len(s["runs"]) for s in as_json["studies"]] == [3] and not out.exists()


def test_usage_errors_exit_2():
    assert nsysan_run("test.bogus=1", "--dry-run").exit_code == 2
    assert nsysan_run("test.num_samples=1,2", "--dry-run").exit_code == 2
    result = nsysan_run("--list")
    assert result.exit_code == 0 and "numa_study" in result.stdout


# -- real studies under nsys (CPU mode) ----------------------------------------------------------------------

def _study(out: Path, experiment: str = "quick_test") -> Path:
    (date,) = (out / experiment).iterdir()
    (folder,) = date.iterdir()
    return folder


@pytest.fixture(scope="module")
def quick_study(nsys, tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    result = nsysan_run(*QUICK, f"output_dir={out}", f"nsys.path={nsys}", "analyze=true")
    return result, _study(out), out


def test_quick_test_end_to_end(quick_study):
    """run -> .nsys-rep -> export -> nsysan latency --by-model: 3 models, the 4 stages, one instance of each
    per measured batch."""
    result, folder, _ = quick_study
    assert result.exit_code == 0, result.output
    assert {p.name for p in folder.iterdir()} >= {"nsys_reports", "logs", "results.json", "experiment_summary.json"}
    (job,) = compose_jobs(QUICK)
    models = job.cfg["models"]
    measured = -(-job.cfg["test"]["num_samples"] // job.cfg["test"]["batch_size"])
    reports = folder / "nsys_reports"
    assert sorted(p.name for p in reports.glob("*.nsys-rep")) == sorted(
        f"pipeline_gpu0_numa0_{m}.nsys-rep" for m in models)
    for model in models:  # analyze=true printed the table
        assert model in result.stdout
    assert (folder / "latency_by_model.csv").is_file()

    latency = cli.invoke(nsysan_app, ["latency", "--by-model", "--exclude-within", "warmup_*", "--merge-numbered",
                                      "-f", "json", str(reports)])
    assert latency.exit_code == 0, latency.output
    rows = json.loads(latency.stdout)
    counts = {(r["model"], r["range"]): r["instances"] for r in rows}
    assert {m for m, _ in counts} == set(models)
    for model in models:
        for stage in (*STAGES, "batch_*"):
            assert counts[(model, stage)] == measured, (model, stage)

    summary = json.loads((folder / "experiment_summary.json").read_text())
    assert summary["counts"]["ok"] == 3 and summary["success_rate_pct"] == 100.0
    assert summary["analysis"]["export"]["failed"] == 0
    if one_node():
        assert any(n.startswith("remote placement could not be tested") for n in summary["notes"])
        assert summary["remote_placement_tested"] is False
        assert "remote placement could not be tested" in result.stderr


def test_sidecars(quick_study, nsys):
    _, folder, _ = quick_study
    (job,) = compose_jobs(QUICK)
    results = json.loads((folder / "results.json").read_text())
    for record in results["runs"]:
        meta = json.loads(Path(record["sidecar"]).read_text())
        assert meta["model"] == record["model"] and meta["gpu"] == 0 and meta["numa"] == 0
        assert meta["variant"] is None and meta["gpu_numa_node"] is None
        assert meta["batch_size"] == job.cfg["test"]["batch_size"] and meta["samples_per_s"] > 0
        assert meta["samples_per_s"] == record["samples_per_s"]
        binding = meta["binding"]
        assert binding["cpus"] == host.parse_list(binding["cpus_allowed_list"])
        if record["bind"]:  # numactl --cpunodebind=0 --membind=0 is what the run had
            assert binding["cpus"] == host.parse_list(host.numa_nodes()[2][0])
            assert binding["mems"] == [0]
        assert meta["config"]["num_samples"] == job.cfg["test"]["num_samples"]
        assert meta["versions"]["nsys"] == results["nsys"]["version"] and meta["versions"]["nvtx_backend"] == "nvtx"
        assert meta["run"]["command"] == record["command"]


def test_resume_skips_finished_runs(quick_study, nsys):
    _, folder, _ = quick_study
    reports = folder / "nsys_reports"
    stamps = {p.name: p.stat().st_mtime_ns for p in reports.glob("*.nsys-rep")}
    result = nsysan_run("--resume", str(folder))
    assert result.exit_code == 0, result.output
    assert "0 to run, 3 done before" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in reports.glob("*.nsys-rep")} == stamps
    # A run whose report went missing runs again; the others stay done.
    gone = sorted(stamps)[0]
    (reports / gone).unlink()
    result = nsysan_run(f"resume={folder}")
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads((folder / "results.json").read_text())["runs"]}
    rerun = gone.removesuffix(".nsys-rep")
    assert records[rerun]["attempts"] == 2 and not records[rerun]["resumed"]
    assert all(r["resumed"] for name, r in records.items() if name != rerun)
    assert (reports / gone).is_file()


def test_failures_are_isolated_and_missing_nodes_skipped(nsys, tmp_path):
    """A model that raises fails alone; its leftovers leave nsys_reports/; a node that does not exist is skipped."""
    nodes = host.numa_nodes()[0]
    missing = max(nodes) + 5
    result = nsysan_run(*QUICK, "models=[vit48x2x128,vit0x0x0]", f"hardware.numa_nodes=[0,{missing}]",
                        f"output_dir={tmp_path}", f"nsys.path={nsys}")
    assert result.exit_code == 3, result.output
    folder = _study(tmp_path)
    records = {r["name"]: r for r in json.loads((folder / "results.json").read_text())["runs"]}
    bad = records["pipeline_gpu0_numa0_vit48x2x128"]
    assert bad["status"] == "failed" and "resolution 224 is not a multiple of patch 48" in bad["reason"]
    assert records["pipeline_gpu0_numa0_vit0x0x0"]["status"] == "ok"
    for model in ("vit48x2x128", "vit0x0x0"):
        skipped = records[f"pipeline_gpu0_numa{missing}_{model}"]
        assert skipped["status"] == "skipped"
        assert skipped["reason"].startswith(f"NUMA node {missing} does not exist here")
    assert [p.name for p in (folder / "nsys_reports").glob("*.nsys-rep")] == ["pipeline_gpu0_numa0_vit0x0x0.nsys-rep"]
    assert (folder / "logs" / "pipeline_gpu0_numa0_vit48x2x128.log").is_file()
    summary = json.loads((folder / "experiment_summary.json").read_text())
    assert summary["counts"] == {"ok": 1, "failed": 1, "timeout": 0, "skipped": 2, "interrupted": 0, "pending": 0,
                                 "planned": 4, "resumed": 0}
    assert summary["success_rate_pct"] == 50.0
    assert f"skipped: NUMA node {missing} does not exist here" in " ".join(summary["notes"])


def test_timeout_is_recorded_and_stops_nsys_and_the_workload(nsys, tmp_path):
    result = nsysan_run(*QUICK, "models=[vit32x4x512]", "test.num_samples=400", "timeout_s=2",
                        f"output_dir={tmp_path}", f"nsys.path={nsys}")
    assert result.exit_code == 1, result.output
    folder = _study(tmp_path)
    (record,) = json.loads((folder / "results.json").read_text())["runs"]
    assert record["status"] == "timeout" and "timed out after 2 s" in record["reason"]
    assert not list((folder / "nsys_reports").glob("*.nsys-rep"))
    time.sleep(0.5)
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(folder) not in left  # neither nsys nor the workload (both carry the study folder in their args)
