"""Per-report work on local worker processes (--jobs) and on a Dask distributed cluster (--scheduler): the same
results, notes and failures in the same order as in one process, and errors that say what went wrong."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import nsysan
from nsysan import parallel
from nsysan.cli import app
from nsysan.errors import NsysanError

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "broken.sqlite").write_text("not an export")
    return [*nsysan.sample_paths(), FIXTURES / "h200x2" / "ddp_resnet18_2gpu.sqlite",
            FIXTURES / "gpu_run" / "pipeline_gpu0_numa0_vit32x2x256.sqlite", folder / "broken.sqlite"]


@pytest.fixture
def where(monkeypatch):
    """Set where work runs for one test."""
    def put(**settings):
        monkeypatch.setattr(parallel, "_configured", {})
        parallel.configure(**settings)
    yield put


def _same(a, b) -> None:
    assert a.frame.equals(b.frame), (a.frame, b.frame)
    assert a.notes == b.notes and a.analysed == b.analysed
    assert [(f.path, f.reason) for f in a.failures] == [(f.path, f.reason) for f in b.failures]


ANALYSES = {"latency": {"by": ["model"]}, "kernels": {}, "bandwidth": {}, "utilization": {"window": "forward"},
            "comm": {}, "skew": {}, "info": {}}


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_local_workers_give_what_one_process_gives(name, corpus, where):
    analysis = nsysan.ANALYSES[name]
    where(jobs=1)
    alone = analysis(corpus, **ANALYSES[name])
    assert alone.failures and alone.analysed >= 1
    where(jobs=2)
    _same(alone, analysis(corpus, **ANALYSES[name]))


def test_a_dask_cluster_gives_what_one_process_gives(corpus, where):
    distributed = pytest.importorskip("distributed") if os.environ.get("CI") != "true" else __import__("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        for name in ("latency", "comm", "info"):
            where(jobs=1)
            alone = nsysan.ANALYSES[name](corpus, **ANALYSES[name])
            where(scheduler=cluster.scheduler_address)
            _same(alone, nsysan.ANALYSES[name](corpus, **ANALYSES[name]))
        with distributed.Client(cluster.scheduler_address) as client:
            assert len(client.scheduler_info()["workers"]) == 2
        result = CliRunner().invoke(app, ["latency", "--by-model", "-f", "csv", "--scheduler",
                                          cluster.scheduler_address, *map(str, corpus[:5])])
        where(jobs=1)
        alone = CliRunner().invoke(app, ["latency", "--by-model", "-f", "csv", *map(str, corpus[:5])])
        assert result.exit_code == 0 and result.stdout == alone.stdout


def test_progress_counts_every_report_once_whatever_runs_it(corpus, where):
    where(jobs=2)
    seen = []
    nsysan.latency(corpus, progress=seen.append)
    assert sorted(map(str, seen)) == sorted(map(str, corpus))


def test_bad_settings_are_one_line_errors(where):
    with pytest.raises(NsysanError, match="jobs must be a positive number or auto, not 'many'"):
        where(jobs="many")
    where(scheduler="tcp://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(NsysanError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        nsysan.latency(nsysan.sample_paths()[:2])
    ran = CliRunner().invoke(app, ["latency", "--sample", "--jobs", "0.5"])
    assert ran.exit_code == 1 and ran.stderr.strip() == "nsysan: jobs must be a positive number or auto, not '0.5'"
    # The dashboard's URL instead of the scheduler's: one line, and no Client left to hang on its way out.
    ran = CliRunner().invoke(app, ["latency", "--sample", "--scheduler", "http://127.0.0.1:8787"])
    assert ran.exit_code == 1 and ran.stderr.startswith("nsysan: not a Dask scheduler address: http://127.0.0.1:8787")
    assert len(ran.stderr.strip().splitlines()) == 1


def test_workers_do_not_run_the_callers_script_again(tmp_path):
    """A script without a __main__ guard must not run once more in every worker process."""
    script = tmp_path / "sweep.py"
    marker = tmp_path / "runs.txt"
    script.write_text(textwrap.dedent(f"""
        import nsysan
        from nsysan import parallel
        with open({str(marker)!r}, "a") as f:
            f.write("ran\\n")
        parallel.configure(jobs=2)
        result = nsysan.latency(nsysan.sample_paths(), by=["model"])
        print(result.frame.height, len(result.failures))
        """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(nsysan.latency(nsysan.sample_paths(), by=["model"]).frame.height), "0"]
    assert marker.read_text() == "ran\n"


def test_a_worker_that_dies_is_one_line(where, monkeypatch, corpus):
    where(jobs=2)
    ran = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, sys, functools
        import nsysan
        from nsysan import parallel, engine
        parallel.configure(jobs=2)
        try:
            list(parallel.run_each(os._exit, [1] * 2000))  # dies while tasks are still being sent
        except nsysan.NsysanError as e:
            print(e)
        """)], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert ran.stdout.strip() == "a worker process died (killed for memory?); try fewer --jobs", ran.stderr
