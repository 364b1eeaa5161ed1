"""`pip install .` ships what nsysan needs at run time (every module, SQL file, sample, runner config and the
workloads), and the installed nsysan runs a study from a folder that is not the checkout."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: What a user's install has no use for, and what building leaves in the tree.
NOT_SHIPPED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".venv*", "tests",
                                     "notebooks", "bench", "docs", ".ci")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy, so that building writes nothing into the checkout the other tests run from.
    tree = tmp_path_factory.mktemp("src") / "nsysan"
    shutil.copytree(ROOT, tree, ignore=NOT_SHIPPED)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(tree),
                    "-w", str(out)], check=True, capture_output=True, text=True)
    (built,) = out.glob("nsysan-*.whl")
    return built


def test_the_wheel_holds_every_module_data_file_and_workload(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / "nsysan").rglob("*")
              if p.is_file() and p.suffix in {".py", ".sql", ".yaml", ".sqlite", ".json", ".j2", ".css"}
              and "__pycache__" not in p.parts}
    wanted |= {f"nsysan/workloads/{p.name}" for p in (ROOT / "workloads").glob("*.py")}
    assert "nsysan/workloads/vit_pipeline.py" in wanted
    assert sorted(wanted - shipped) == []


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A virtual environment with the wheel installed; its other packages are this interpreter's."""
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env, system_site_packages=True, with_pip=True)
    subprocess.run([env / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)],  # else pip keeps an nsysan it finds installed already
                   check=True, capture_output=True, text=True)
    return env


def test_installed_nsysan_runs_a_cpu_study_outside_the_checkout(installed, nsys, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # a PYTHONPATH naming the checkout would shadow the wheel
    where = subprocess.run([installed / "bin" / "python", "-c", "import nsysan; print(nsysan.__file__)"],
                           cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert Path(where).is_relative_to(installed), where  # the wheel's nsysan, not the checkout's

    quick = ["experiment=quick_test", "hardware=cpu", "test.num_samples=16", "test.warmup_batches=1",
             f"output_dir={tmp_path / 'studies'}", f"nsys.path={nsys}"]
    plan = subprocess.run([installed / "bin" / "nsysan", "run", *quick, "--dry-run", "-f", "json"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    commands = " ".join(" ".join(r["command"]) for s in json.loads(plan.stdout)["studies"] for r in s["runs"])
    assert str(installed) in commands and str(ROOT / "workloads") not in commands

    run = subprocess.run([installed / "bin" / "nsysan", "run", *quick], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    reports = list((tmp_path / "studies").rglob("*.nsys-rep"))
    assert len(reports) == 3, reports
