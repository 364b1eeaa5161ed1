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


NSYS_FIXTURES = {"nsys": "NSYSAN_TEST_NSYS", "nsys_2022": "NSYSAN_TEST_NSYS_2022"}
#: Opt-in to skipping the tests that need a real nsys (they are many: live nsys stats, captures, exports).
ALLOW_SKIP = "NSYSAN_ALLOW_SKIP"
INSTALL_HINT = ("bash scripts/test installs nsys 2023.4 and 2022.4 into ~/.cache/nsysan and runs the suite "
                "(or point NSYSAN_TEST_NSYS / NSYSAN_TEST_NSYS_2022 at an nsys)")


def _nsys_path(env_var: str) -> str | None:
    path = os.environ.get(env_var) or (shutil.which("nsys") if env_var == "NSYSAN_TEST_NSYS" else None)
    return path if path and Path(path).exists() else None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skips_allowed() -> bool:
    return os.environ.get(ALLOW_SKIP, "").lower() in ("1", "true", "yes")


def _nsys(env_var: str) -> str:
    """Path of an installed nsys. Under CI a missing nsys fails the test; elsewhere it skips, and the session
    fails at the end (pytest_sessionfinish) unless NSYSAN_ALLOW_SKIP=1."""
    path = _nsys_path(env_var)
    if path:
        return path
    message = f"nsys not installed: {INSTALL_HINT}"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


# -- no silent skips -----------------------------------------------------------------------------------------------
_SKIPPED_FOR_NSYS: dict[str, int] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _deselect_slow_samples(config, items)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the tests skipped because an nsys is missing (the skip message of ``_nsys``)."""
    if report.skipped and report.when == "setup" and INSTALL_HINT in str(report.longrepr):
        env_vars = [v for v in NSYS_FIXTURES.values() if _nsys_path(v) is None] or ["nsys"]
        key = " or ".join(env_vars)
        _SKIPPED_FOR_NSYS[key] = _SKIPPED_FOR_NSYS.get(key, 0) + 1


def _missing_message() -> str:
    count = sum(_SKIPPED_FOR_NSYS.values())
    missing = ", ".join(_SKIPPED_FOR_NSYS)
    return (f"nsysan: {count} test(s) skipped because no nsys was found ({missing}). {INSTALL_HINT}. "
            f"Set {ALLOW_SKIP}=1 to accept the skips.")


def pytest_report_header(config: pytest.Config) -> list[str]:
    missing = [v for v in NSYS_FIXTURES.values() if _nsys_path(v) is None]
    return [f"nsysan: no nsys for {', '.join(missing)}: tests needing it will be skipped"
            + ("" if _skips_allowed() else f" and the run will fail ({ALLOW_SKIP}=1 accepts that)")] if missing else []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _SKIPPED_FOR_NSYS and not _in_ci():
        terminalreporter.write_line(_missing_message(), red=not _skips_allowed(), yellow=_skips_allowed())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED_FOR_NSYS and not _in_ci() and not _skips_allowed() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- quick runs (scripts/mutation): one bundled export instead of all ---------------------------------------------
QUICK_SAMPLES = "NSYSAN_QUICK_SAMPLES"


def _deselect_slow_samples(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With NSYSAN_QUICK_SAMPLES=name[,name], tests parametrized by a real export run for those exports only."""
    quick = {n for n in os.environ.get(QUICK_SAMPLES, "").split(",") if n}
    if not quick:
        return
    real = {p.name.removesuffix(".sqlite") for p in [*nsysan.sample_paths(), *FIXTURES.rglob("*.sqlite")]}
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        named = {v for v in params.values() if isinstance(v, str) and v in real}
        (drop if named - quick else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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
