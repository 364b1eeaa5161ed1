"""What a command costs before it reads anything: a command whose reports are all in the analysis cache imports
neither numpy, duckdb, pydantic nor the worker-process machinery (they were most of a cached run's time,
bench/README.md), and modules nsysan defers still work when they are first used."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import nsysan
from nsysan.lazy import LazyModule

#: Runs the command, then prints which of these modules the process had imported when it exited.
PROBE = """
import atexit, sys
WATCHED = ("numpy", "duckdb", "pydantic", "multiprocessing.pool", "concurrent.futures.process")
atexit.register(lambda: print("imported:", *[m for m in WATCHED if m in sys.modules], file=sys.stderr))
sys.argv = ["nsysan", *sys.argv[1:]]
from nsysan.cli import main
main()
"""


def _imported(stderr: str) -> set[str]:
    line = next(line for line in stderr.splitlines() if line.startswith("imported:"))
    return set(line.split()[1:])


@pytest.mark.parametrize("reports", ["one", "sweep"])
def test_a_cached_command_imports_no_query_array_or_worker_libraries(reports, tmp_path):
    """One report (its own cache entry) and the sample sweep (one entry for the stack of its reports)."""
    named = [str(nsysan.sample_paths()[0])] if reports == "one" else ["--sample", "--by", "model"]
    env = {**os.environ, "NSYSAN_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NSYSAN_NO_CACHE", None)
    command = [sys.executable, "-c", PROBE, "latency", *named, "--format", "csv"]
    # Cold in this process (one job), so that the probe is seen to see imports: duckdb read the exports and
    # numpy attributed their ops. Warm with two jobs: cached reports start no worker either.
    cold = subprocess.run(command, env={**env, "NSYSAN_JOBS": "1"}, capture_output=True, text=True, check=True)
    warm = subprocess.run(command, env={**env, "NSYSAN_JOBS": "2"}, capture_output=True, text=True, check=True)
    assert {"numpy", "duckdb"} <= _imported(cold.stderr)
    assert _imported(warm.stderr) == set()
    assert warm.stdout == cold.stdout and warm.stdout.count("\n") > 5


def test_a_deferred_module_is_imported_on_first_use_and_then_read_as_an_attribute():
    fake = LazyModule("json")
    assert "dumps" not in vars(fake)
    assert fake.dumps({"a": 1}) == '{"a": 1}'
    import json

    assert vars(fake)["dumps"] is json.dumps
    try:
        fake.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("a missing attribute must raise AttributeError")


def test_the_command_leaves_after_its_threads_output_and_atexit_functions(tmp_path):
    """nsysan.cli ends the process without tearing down the imported modules; what Python does at exit before
    that teardown must still happen."""
    probe = f"""
import atexit, pathlib, sys, threading, time
atexit.register(lambda: pathlib.Path({str(tmp_path / "atexit")!r}).write_text("ran"))
threading.Thread(target=lambda: (time.sleep(2.5), pathlib.Path({str(tmp_path / "thread")!r}).write_text("ran"))).start()
sys.argv = ["nsysan", *sys.argv[1:]]
from nsysan.cli import main
main()
"""
    env = {**os.environ, "NSYSAN_NO_CACHE": "1"}
    done = subprocess.run([sys.executable, "-c", probe, "info", "--sample", "--format", "csv"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + len(nsysan.sample_paths())  # every row, flushed
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "ran"
    failed = subprocess.run([sys.executable, "-c", probe, "info", str(tmp_path / "none.sqlite")], env=env,
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "none.sqlite" in failed.stderr
