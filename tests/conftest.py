"""Shared test fixtures: the sample sweep, truth files, and the real nsys the test command installs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import nsysan

FIXTURES = Path(__file__).parent / "fixtures"


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
