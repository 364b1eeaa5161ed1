"""``nsysan run``: Hydra configs and multirun sweeps, the plan (skips of missing NUMA nodes and GPUs), dry runs,
and real studies in CPU mode under nsys: run -> reports -> export -> latency by model, failures isolated,
timeouts that stop everything, resume."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nsysan import host
from nsysan.cli import app as nsysan_app
from nsysan.cli import run as cli_run
from nsysan.host import Gpu, Machine
from nsysan.runner import dist
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
        kind = dist.kind_of(job.cfg)
        sizes[name] = (len(dist.combinations(job.cfg, kind)) if kind else
                       len(hw["gpu_ids"]) * len(hw["numa_nodes"]) * len(job.cfg["models"]) * len(job.cfg["variants"]))
    assert sizes == {"quick_test": 3, "numa_study": 48, "scaling_study": 8, "compile_study": 8,
                     "resolution_study": 8, "pipeline_study": 14, "ddp_study": 24, "partition_study": 4}


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


# -- distributed kinds: ddp_study and partition_study ----------------------------------------------------------

WORKLOADS = Path(__file__).parents[1] / "workloads"
TWO_GPUS = [Gpu(0, "H200", "0000:1b:00.0", numa_node=0), Gpu(1, "H200", "0000:9b:00.0", numa_node=1)]
#: Two runs each (binding off/on; layer-wise/tensor), seconds apiece: the CPU sizes of on_hardware/*_cpu.yaml.
DDP_CPU = ["experiment=ddp_study", "hardware=cpu", "grid.workers=[1]", "grid.precision=[fp32]"]
PARTITION_CPU = ["experiment=partition_study", "hardware=cpu", "grid.hidden=[32]"]


def _torchrun(world: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]


def test_ddp_study_plan_on_two_gpus():
    (study,) = plan(compose_jobs(["experiment=ddp_study"]), fake_machine(TWO_GPUS), "nsys", "d/t")
    names = [r.name for r in study.runs]
    assert len(names) == 24 and names[:6] == [
        "ddp_resnet18_w2_b256_fp32_workers0_nobind", "ddp_resnet18_w2_b256_fp32_workers0_bind",
        "ddp_resnet18_w2_b256_fp16_workers0_nobind", "ddp_resnet18_w2_b256_fp16_workers0_bind",
        "ddp_resnet18_w2_b256_bf16_workers0_nobind", "ddp_resnet18_w2_b256_bf16_workers0_bind"]
    assert names[-1] == "ddp_resnet18_w2_b256_bf16_workers8_pf2_bind"
    by_name = {r.name: r for r in study.runs}
    bound = by_name["ddp_resnet18_w2_b256_bf16_workers4_pf2_bind"]
    assert bound.command == [
        "nsys", "profile", "-t", "cuda,nvtx,osrt", "-s", "none", "--cpuctxsw=none", "--force-overwrite", "true",
        "-o", str(study.reports / bound.name), *_torchrun(2), "--no-python", sys.executable,
        str(WORKLOADS / "numa_bind.py"), "--nodes", "0,1", "--numactl", "/usr/bin/numactl", "--", sys.executable,
        str(WORKLOADS / "ddp_train.py"), "--device", "cuda", "--gpus", "0,1", "--model", "resnet18",
        "--batch-size", "256", "--steps", "50", "--warmup-steps", "10", "--precision", "bf16", "--workers", "4",
        "--prefetch-factor", "2", "--numa-binding", "--channels-last", "--lr", "0.1", "--seed", "0",
        "--variant", "w2_b256_bf16_workers4_pf2_bind", "--out-meta", str(study.reports / f"{bound.name}.meta.json")]
    assert (bound.skip, bound.placement, bound.bind, bound.gpus, bound.numa_nodes, bound.world_size,
            bound.measured_batches) == (None, "local", True, [0, 1], [0, 1], 2, 50)
    unbound = by_name["ddp_resnet18_w2_b256_bf16_workers4_pf2_nobind"]
    assert unbound.command[11:18] == [*_torchrun(2), str(WORKLOADS / "ddp_train.py")]
    assert "--no-numa-binding" in unbound.command and not [a for a in unbound.command if "numa_bind" in a
                                                           or "numactl" in a]
    assert unbound.placement == "unbound" and not unbound.bind
    record = bound.to_dict()
    assert (record["kind"], record["gpu"], record["numa"], record["settings"]["workers"]) == ("ddp", None, None, 4)
    # The ranks' nodes from the configuration: rank 0 on node 1, rank 1 on node 0 (each GPU's remote node).
    (study,) = plan(compose_jobs(["experiment=ddp_study", "hardware.rank_numa_nodes=[1,0]"]),
                    fake_machine(TWO_GPUS), "nsys", "d/t")
    swapped = next(r for r in study.runs if r.bind)
    assert swapped.placement == "remote" and swapped.command[swapped.command.index("--nodes") + 1] == "1,0"


def test_ddp_study_skips_what_this_machine_cannot_do():
    unknown = [Gpu(0, numa_node=None), Gpu(1, numa_node=None)]
    (study,) = plan(compose_jobs(["experiment=ddp_study"]), fake_machine(unknown), "nsys", "d/t")
    unknown_nodes = ("NUMA binding per rank needs each GPU's NUMA node, unknown for GPU 0, 1 (sysfs): set "
                     "hardware.rank_numa_nodes=[...]")
    assert {r.skip for r in study.runs} == {None, unknown_nodes}
    assert all((r.skip is None) == (not r.bind) for r in study.runs)
    (study,) = plan(compose_jobs(["experiment=ddp_study"]), fake_machine(TWO_GPUS[:1]), "nsys", "d/t")
    assert {r.skip for r in study.runs} == {"GPU 1 does not exist here (GPUs: 0; from test)"}
    (study,) = plan(compose_jobs(["experiment=ddp_study", "hardware.gpu_ids=[0]"]), fake_machine(TWO_GPUS), "nsys",
                    "d/t")
    assert {r.skip for r in study.runs} == {None} and study.runs[0].name.startswith("ddp_resnet18_w1_")
    (study,) = plan(compose_jobs(["experiment=ddp_study", "ddp.world_size=4"]), fake_machine(TWO_GPUS), "nsys", "d/t")
    assert {r.skip for r in study.runs} == {"world size 4 needs 4 GPUs, hardware.gpu_ids has 2"}
    (study,) = plan(compose_jobs(["experiment=ddp_study"]), Machine([0, 1], [0, 1], TWO_GPUS, "test", None), "nsys",
                    "d/t")
    no_numactl = "numactl is not installed: cannot bind each rank to its NUMA node"
    assert {r.skip for r in study.runs if r.bind} == {no_numactl}
    assert {r.skip for r in study.runs if not r.bind} == {None}


def test_partition_study_plan_grid_and_sweeps():
    (study,) = plan(compose_jobs(["experiment=partition_study"]), fake_machine(TWO_GPUS), "nsys", "d/t")
    assert [r.name for r in study.runs] == [
        f"partition_mlp16x{hidden}_{mode}_w2_b8_s512_bf16_nobind" for mode in ("layerwise", "tensor")
        for hidden in (1024, 4096)]
    tensor = study.runs[2]
    tail = tensor.command[tensor.command.index("--device"):]
    assert tensor.command[11:18] == [*_torchrun(2), str(WORKLOADS / "partition.py")]
    assert tail == ["--device", "cuda", "--gpus", "0,1", "--mode", "tensor", "--layers", "16", "--hidden", "1024",
                    "--ffn-multiplier", "4", "--batch-size", "8", "--seq-len", "512", "--batches", "50",
                    "--warmup-batches", "10", "--precision", "bf16", "--no-numa-binding", "--seed", "0",
                    "--variant", "tensor_w2_b8_s512_bf16_nobind",
                    "--out-meta", str(study.reports / f"{tensor.name}.meta.json")]
    # A world-size axis: 1 rank on GPU 0, 2 ranks on GPUs 0 and 1; a grid axis the name lacks becomes key-value.
    (study,) = plan(compose_jobs(["experiment=partition_study", "grid.hidden=[1024]", "grid.mode=[tensor]",
                                  "+grid.world_size=[1,2]", "+grid.batches=[5]"]), fake_machine(TWO_GPUS), "nsys",
                    "d/t")
    assert [(r.name, r.gpus, r.command[r.command.index("--nproc_per_node") + 1]) for r in study.runs] == [
        ("partition_mlp16x1024_tensor_w1_b8_s512_bf16_nobind_batches-5", [0], "1"),
        ("partition_mlp16x1024_tensor_w2_b8_s512_bf16_nobind_batches-5", [0, 1], "2")]
    # Multirun: a swept setting that is in the name adds nothing; one that is not is appended.
    jobs = compose_jobs(["experiment=partition_study", "grid.hidden=[1024]", "grid.mode=[tensor]",
                         "partition.precision=fp16,bf16", "partition.seed=1,2"], multirun=True)
    studies = plan(jobs, fake_machine(TWO_GPUS), "nsys", "d/t")
    assert [r.name for r in studies[0].runs] == [
        f"partition_mlp16x1024_tensor_w2_b8_s512_{p}_nobind_seed-{s}" for p in ("fp16", "bf16") for s in (1, 2)]
    # Unlike ViT names, these do not show the GPUs: a sweep over GPU pairs is added.
    jobs = compose_jobs(["experiment=partition_study", "grid.hidden=[1024]", "grid.mode=[tensor]",
                         "hardware.gpu_ids=[0,1],[2,3]"], multirun=True)
    (study,) = plan(jobs, fake_machine(TWO_GPUS), "nsys", "d/t")
    assert [(r.name, r.gpus, r.skip) for r in study.runs] == [
        ("partition_mlp16x1024_tensor_w2_b8_s512_bf16_nobind_gpu_ids-0-1", [0, 1], None),
        ("partition_mlp16x1024_tensor_w2_b8_s512_bf16_nobind_gpu_ids-2-3", [2, 3],
         "GPU 2 does not exist here (GPUs: 0, 1; from test)")]


def test_last_error_reads_a_ranks_error_line_through_torchrun(tmp_path):
    from nsysan.runner.study import last_error

    log = tmp_path / "run.log"
    log.write_text("$ nsys profile ... ddp_train.py --model x\n[rank1]: ddp_train: error: --model 'x': expected "
                   "resnet18\nE1201 failed (exitcode: 2) local_rank: 1\ntorch.distributed.elastic.multiprocessing."
                   "errors.ChildFailedError: \n")
    assert last_error(log) == "ddp_train: error: --model 'x': expected resnet18"


@pytest.mark.parametrize("overrides, words", [
    (["experiment=ddp_study", "+grid.bogus=[1]"], "grid.bogus: not a ddp setting"),
    (["experiment=ddp_study", "ddp.precision=fp8"], "ddp.precision must be one of fp32, fp16, bf16"),
    (["experiment=ddp_study", "grid.workers=[-1]"], "grid.workers value must be >= 0"),
    (["experiment=ddp_study", "grid.workers=[]"], "grid.workers is empty"),
    (["experiment=ddp_study", "+ddp.extra=1"], "ddp: unknown setting(s) extra"),
    (["experiment=ddp_study", "ddp.numa_binding=1"], "ddp.numa_binding must be bool"),
    (["experiment=ddp_study", "ddp.lr=0"], "ddp.lr must be positive"),
    (["experiment=ddp_study", "hardware.nproc=0"], "hardware.nproc must be a positive integer"),
    (["experiment=partition_study", "grid.mode=[ring]"], "grid.mode value must be one of layerwise, tensor"),
    (["experiment=partition_study", "hardware.rank_numa_nodes=[a]"], "hardware.rank_numa_nodes must be null"),
    (["workload.kind=mpi"], "workload.kind must be one of vit, ddp, partition"),
    (["workload.kind=ddp"], "workload.kind=ddp needs a mapping ddp:"),
])
def test_distributed_config_errors(overrides, words):
    with pytest.raises(ConfigError) as error:
        compose_jobs(overrides)
    assert words in str(error.value)


def test_dry_run_shows_the_torchrun_and_numactl_commands(monkeypatch, tmp_path):
    """On a 2-GPU machine (as detected), the plan prints each run's exact command; nothing is written."""
    import shlex

    monkeypatch.setattr(host, "discover", lambda **_: fake_machine(TWO_GPUS))
    out = tmp_path / "out"
    args = ["experiment=ddp_study", f"output_dir={out}", "nsys.path=/nonexistent/nsys"]  # printed as `nsys`
    result = nsysan_run(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    commands = [shlex.split(line.split(": ", 1)[1]) for line in result.stdout.splitlines()
                if line.startswith("  ddp_")]
    study_dir = Path(commands[0][commands[0].index("-o") + 1]).parents[1]
    stamp = study_dir.relative_to(out / "ddp_study").as_posix()
    (study,) = plan(compose_jobs(args), fake_machine(TWO_GPUS), "nsys", stamp)
    assert commands == [r.command for r in study.runs] and len(commands) == 24
    assert sum("/usr/bin/numactl" in c for c in commands) == 12
    assert re.search(r"^\s*\d+\s+ddp_resnet18_w2_b256_fp16_workers2_pf2_bind\s", result.stdout, re.M)  # the table
    assert not out.exists()


def _study_dir(out: Path, experiment: str) -> Path:
    (date,) = (out / experiment).iterdir()
    (folder,) = date.iterdir()
    return folder


def _lost_by_nsys(folder: Path) -> list[dict]:
    """Runs whose capture nsys itself lost (see tests.support.captured_nvtx): failed with nsys's own words in the
    log, or ok with an export (when there is one) that holds no NVTX range at all."""
    from tests.support import NSYS_SESSION_LOST, captured_nvtx

    lost = []
    for record in json.loads((folder / "results.json").read_text())["runs"]:
        log = Path(record["log"]).read_text(errors="replace") if Path(record["log"]).is_file() else ""
        export = Path(record["report"]).with_suffix(".sqlite") if record["report"] else None
        if (record["status"] == "failed" and any(words in log for words in NSYS_SESSION_LOST)) or (
                record["status"] == "ok" and export and export.is_file() and not captured_nvtx(export)):
            lost.append(record)
    return lost


def _distributed_study(out: Path, experiment: str, *args: str):
    """``nsysan run ARGS`` into ``out``; runs that nsys lost run once more through ``--resume``."""
    result = nsysan_run(*args, f"output_dir={out}")
    folder = _study_dir(out, experiment)
    lost = _lost_by_nsys(folder)
    for record in lost:
        if record["report"]:
            Path(record["report"]).unlink(missing_ok=True)  # an ok run without its report runs again
    if lost:
        result = nsysan_run("--resume", str(folder))
    return result, folder


def _check_ranks_captured(folder: Path) -> list[dict]:
    """Every ok run: the export (analyze=true made it) holds, per pid, exactly the ranges each rank reported."""
    from tests.support import nvtx_ranges_by_pid

    metas = []
    for record in json.loads((folder / "results.json").read_text())["runs"]:
        assert record["status"] == "ok", record
        meta = json.loads(Path(record["sidecar"]).read_text())
        export = Path(record["report"]).with_suffix(".sqlite")
        expected = {r["pid"]: r["nvtx_ranges"] for r in meta["ranks"]}
        assert len(expected) == 2 and nvtx_ranges_by_pid(export) == expected, record["name"]
        assert meta["run"]["name"] == record["name"] and meta["run"]["world_size"] == 2
        assert meta["samples_per_s"] == record["samples_per_s"] > 0
        metas.append(meta)
    return metas


@pytest.fixture(scope="module")
def ddp_cpu_study(nsys, torch_installed, tmp_path_factory):
    return _distributed_study(tmp_path_factory.mktemp("ddp"), "ddp_study", *DDP_CPU, f"nsys.path={nsys}",
                              "analyze=true")


def test_ddp_study_cpu_end_to_end(ddp_cpu_study):
    result, folder = ddp_cpu_study
    assert result.exit_code == 0, result.output
    binds = ("nobind", "bind") if host.discover(gpus=False).numactl else ("nobind",)
    names = [f"ddp_wrn10-1_w2_b8_fp32_workers1_pf2_{b}" for b in binds]
    reports = folder / "nsys_reports"
    assert sorted(p.name for p in reports.glob("*.nsys-rep")) == sorted(f"{n}.nsys-rep" for n in names)
    assert sorted(p.name for p in reports.glob("*.meta.json")) == sorted(f"{n}.meta.json" for n in names)
    per_rank = {"warmup_0": 1, "step_1": 1, "step_2": 1, "step_3": 1, "data": 4, "forward": 4, "backward": 4,
                "optimizer": 4}
    for meta in _check_ranks_captured(folder):
        assert [r["nvtx_ranges"] for r in meta["ranks"]] == [per_rank, per_rank]
        bound = meta["numa_binding"]
        assert meta["run"]["name"].endswith("_bind" if bound else "_nobind")
        assert (meta["workload"], meta["world_size"], meta["batch_size"], meta["workers"], meta["precision"]) == (
            "ddp", 2, 8, 1, "fp32")
        assert [r["bound_numa_node"] for r in meta["ranks"]] == ([0, 0] if bound else [None, None])
        assert meta["run"]["rank_numa_nodes"] == ([0, 0] if bound else []) and meta["run"]["numactl"] == bound
        if bound:
            assert all(r["binding"]["mems"] == [0] for r in meta["ranks"])
    summary = json.loads((folder / "experiment_summary.json").read_text())
    assert summary["counts"]["ok"] == len(names) and summary["success_rate_pct"] == 100.0
    assert summary["models"] == ["wrn10-1"] and summary["gpus"] == []
    assert summary["analysis"]["export"]["failed"] == 0
    assert "step_*" in result.stdout and (folder / "latency_by_model.csv").is_file()


def test_ddp_study_resume_skips_finished_runs(ddp_cpu_study):
    _, folder = ddp_cpu_study
    result = nsysan_run("--resume", str(folder))
    assert result.exit_code == 0, result.output
    done = len(list((folder / "nsys_reports").glob("*.nsys-rep")))
    assert f"0 to run, {done} done before" in result.stderr


def test_partition_study_cpu_end_to_end(nsys, torch_installed, tmp_path):
    result, folder = _distributed_study(tmp_path, "partition_study", *PARTITION_CPU, f"nsys.path={nsys}",
                                        "analyze=true")
    assert result.exit_code == 0, result.output
    metas = {m["mode"]: m for m in _check_ranks_captured(folder)}
    outer = {"warmup_0": 1, "batch_1": 1, "batch_2": 1, "batch_3": 1, "batch_4": 1}
    assert [r["nvtx_ranges"] for r in metas["layerwise"]["ranks"]] == [
        {**outer, "layer_0": 5, "layer_1": 5, "send": 5}, {**outer, "recv": 5, "layer_2": 5, "layer_3": 5}]
    assert [r["nvtx_ranges"] for r in metas["tensor"]["ranks"]] == [
        {**outer, **{f"layer_{k}": 5 for k in range(4)}, "allreduce": 20}] * 2
    for mode, meta in metas.items():
        assert meta["run"]["name"] == f"partition_mlp4x32_{mode}_w2_b2_s16_bf16_nobind"
        assert (meta["layers"], meta["hidden"], meta["seq_len"], meta["batch_size"]) == (4, 32, 16, 2)
    assert sorted(p.name for p in (folder / "nsys_reports").glob("*.nsys-rep")) == [
        "partition_mlp4x32_layerwise_w2_b2_s16_bf16_nobind.nsys-rep",
        "partition_mlp4x32_tensor_w2_b2_s16_bf16_nobind.nsys-rep"]


def test_distributed_failure_is_isolated_with_the_workloads_reason(nsys, torch_installed, tmp_path):
    result, folder = _distributed_study(tmp_path, "partition_study", *PARTITION_CPU, "grid.mode=[layerwise]",
                                        "partition.layers=1", f"nsys.path={nsys}")
    assert result.exit_code == 1, result.output
    (record,) = json.loads((folder / "results.json").read_text())["runs"]
    assert record["status"] == "failed"
    assert "partition: error: --layers 1: layer-wise over 2 ranks needs at least one layer per rank" in record["reason"]
    assert not list((folder / "nsys_reports").iterdir())
    assert (folder / "logs" / f"{record['name']}.log").is_file()


def test_distributed_timeout_stops_torchrun_and_every_rank(nsys, torch_installed, tmp_path):
    result, folder = _distributed_study(tmp_path, "ddp_study", *DDP_CPU, "grid.numa_binding=[false]",
                                        "ddp.steps=100000", "timeout_s=12", f"nsys.path={nsys}")
    assert result.exit_code == 1, result.output
    (record,) = json.loads((folder / "results.json").read_text())["runs"]
    assert record["status"] == "timeout" and "timed out after 12 s" in record["reason"]
    time.sleep(0.5)
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(folder) not in left  # nsys, torchrun and both ranks carry the study folder in their arguments
