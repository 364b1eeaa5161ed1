"""Shared test fixtures: the sample sweep, truth files, and the real nsys the test command installs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import nsysan

FIXTURES = Path(__file__).parent / "fixtures"

# Tests run analyses in this process and without the analysis cache, so that a test that patches an analysis
# sees its patch and never another test's cached numbers (nor the user's cache folder); tests/test_cache.py and
# tests/test_parallel.py turn each on, in folders of their own.
os.environ["NSYSAN_NO_CACHE"] = "1"
os.environ["NSYSAN_JOBS"] = "1"
os.environ.pop("NSYSAN_CACHE_DIR", None)
os.environ.pop("NSYSAN_SCHEDULER", None)


def _nsys(env_var: str) -> str:
    """Path of an installed nsys. Under CI a missing nsys fails the test; elsewhere it skips."""
    path = os.environ.get(env_var) or (shutil.which("nsys") if env_var == "NSYSAN_TEST_NSYS" else None)
    if path and Path(path).exists():
        return path
    message = f"nsys not installed: run scripts/test (or set {env_var})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def torch_installed() -> None:
    """torch (the distributed workloads need it): a missing torch fails under CI, skips elsewhere."""
    from tests.support import require_torch

    require_torch()


@pytest.fixture(scope="session")
def nsys() -> str:
    """nsys 2023.4 (or whatever NSYSAN_TEST_NSYS points to)."""
    return _nsys("NSYSAN_TEST_NSYS")


@pytest.fixture(scope="session")
def nsys_2022() -> str:
    """nsys 2022.4, for exports in the oldest schema we support."""
    return _nsys("NSYSAN_TEST_NSYS_2022")


@pytest.fixture(scope="session")
def sample_paths() -> list[Path]:
    paths = nsysan.sample_paths()
    assert len(paths) == 5
    return paths


# -- Live CPU captures (no GPU needed) of workloads/cpu_nvtx.py with the installed nsys releases -----------
# Session-scoped: each nsys release profiles the workload once (a few seconds) and the exports are shared by
# test_reconcile_nsys.py, test_schema_versions.py and test_truth.py.

import json  # noqa: E402 - kept with the fixtures below, which are appended to this file
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402

WORKLOAD = Path(__file__).parents[1] / "workloads" / "cpu_nvtx.py"
# The same arguments for every nsys release, so that their exports can be compared with each other.
CPU_WORKLOAD_ARGS = ("--iterations", "5", "--workers", "2")


@dataclass(frozen=True)
class CpuCapture:
    """One live capture of the CPU workload: the nsys that made it, its exports, and the workload's own counts."""

    nsys: str
    sqlite: Path
    parquetdir: Path | None
    expected: dict[str, int]


def _run_nsys(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} timed out: {' '.join(args)}")
    if done.returncode != 0:
        pytest.fail(f"{what} failed (exit {done.returncode}): {' '.join(args)}\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _capture_cpu_workload(nsys: str, folder: Path, trace_args: list[str], parquet: bool) -> CpuCapture:
    rep = folder / "cpu_nvtx.nsys-rep"
    expect = folder / "expected.json"
    _run_nsys([nsys, "profile", *trace_args, "--force-overwrite", "true", "-o", str(rep),
               sys.executable, str(WORKLOAD), *CPU_WORKLOAD_ARGS, "--expect", str(expect)], "nsys profile")
    if not expect.exists():
        pytest.fail(f"the profiled workload wrote no {expect.name}: it did not run to the end under {nsys}")
    sqlite = folder / "cpu_nvtx.sqlite"
    _run_nsys([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "-o", str(sqlite), str(rep)],
              "nsys export --type sqlite")
    parquetdir = None
    if parquet:
        parquetdir = folder / "cpu_nvtx_pq"
        _run_nsys([nsys, "export", "--type", "parquetdir", "--force-overwrite", "true", "-o", str(parquetdir),
                   str(rep)], "nsys export --type parquetdir")
    return CpuCapture(nsys=nsys, sqlite=sqlite, parquetdir=parquetdir, expected=json.loads(expect.read_text()))


@pytest.fixture(scope="session")
def cpu_capture_2023(nsys: str, tmp_path_factory: pytest.TempPathFactory) -> CpuCapture:
    """The CPU workload profiled with nsys 2023.4 (NVTX + OS runtime), exported to sqlite and parquetdir."""
    return _capture_cpu_workload(nsys, tmp_path_factory.mktemp("cpu2023"), ["-t", "nvtx,osrt"], parquet=True)


@pytest.fixture(scope="session")
def cpu_capture_2022(nsys_2022: str, tmp_path_factory: pytest.TempPathFactory) -> CpuCapture:
    """The CPU workload profiled with nsys 2022.4, exported to sqlite (2022.4 has no parquetdir export).

    2022.4 hangs when it samples or traces the OS runtime here, so it traces NVTX only."""
    return _capture_cpu_workload(nsys_2022, tmp_path_factory.mktemp("cpu2022"),
                                 ["-t", "nvtx", "-s", "none", "--cpuctxsw=none"], parquet=False)
