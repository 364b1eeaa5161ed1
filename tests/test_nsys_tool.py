"""Finding nsys, reading its version, running it with timeouts (nsysan/nsys_tool.py).

Search precedence is tested with small fake ``nsys`` scripts that print a chosen version; version parsing and
parquetdir support are also checked against the real nsys 2023.4 and 2022.4 (their own ``--version`` and
``export --help`` output, read live)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nsysan import nsys_tool
from nsysan.nsys_tool import NsysNotFoundError, find_nsys, parse_version


def fake_nsys(path: Path, version: str, *, parquet: bool = True) -> Path:
    """An executable that answers ``--version`` and ``export --help`` like nsys ``version`` would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    types = "sqlite, hdf, text, json, info, arrow, arrowdir, and parquetdir" if parquet else "sqlite, hdf, text"
    path.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "NVIDIA Nsight Systems version {version}";;
  export) printf '\\t-t, --type=\\n\\n           Possible values are: {types}.\\n           Export format type.\\n';;
  *) exit 1;;
esac
""")
    path.chmod(0o755)
    return path




@pytest.mark.parametrize(("text", "parts", "spelled"), [
    ("NVIDIA Nsight Systems version 2023.4.4.54-234433681190v0", (2023, 4, 4, 54), "2023.4.4.54-234433681190v0"),
    ("NVIDIA Nsight Systems version 2022.4.2.1-df9881f\n", (2022, 4, 2, 1), "2022.4.2.1-df9881f"),
    ("NVIDIA Nsight Systems version 2025.3.1.0", (2025, 3, 1, 0), "2025.3.1.0"),
    # The header of a report written by nsys 2023.4 (after "NVIDIA Tegra Profiler Report ").
    ("2023@4@4@54-234433681190v0.\n", (2023, 4, 4, 54), "2023.4.4.54-234433681190v0"),
    ("NVIDIA Nsight Systems version 2024.2", (2024, 2), "2024.2"),
])
def test_parse_version(text: str, parts: tuple[int, ...], spelled: str) -> None:
    version = parse_version(text)
    assert version is not None
    assert version.parts == parts
    assert str(version) == spelled
    assert version.release == f"{parts[0]}.{parts[1]}"


@pytest.mark.parametrize("text", ["1.", "", "nsys: command not found", "version 12.4"])
def test_parse_version_none(text: str) -> None:
    assert parse_version(text) is None


def test_versions_order() -> None:
    assert parse_version("2023.4.4.54") > parse_version("2023.4.1.97")
    assert parse_version("2024.1.1.59") > parse_version("2023.4.4.54")
    assert parse_version("2022.4.2.1") < parse_version("2023.1.1.127")


def _environ(tmp_path: Path, path_dirs: list[Path], **extra: str) -> dict[str, str]:
    return {"PATH": os.pathsep.join(map(str, path_dirs)), "HOME": str(tmp_path / "home"), **extra}


def test_newest_is_picked_across_path_folders_and_cache(tmp_path: Path) -> None:
    on_path = fake_nsys(tmp_path / "bin" / "nsys", "2022.1.1.1-aaa")
    in_folder = fake_nsys(tmp_path / "opt" / "nsight-systems" / "2024.2.1" / "bin" / "nsys", "2024.2.1.106-bbb")
    older_folder = fake_nsys(tmp_path / "opt" / "nsight-systems" / "2023.1.1" / "bin" / "nsys", "2023.1.1.127-ccc")
    cached = fake_nsys(tmp_path / "home" / ".cache" / "nsysan" / "nsys-x" / "target-linux-x64" / "nsys", "2023.4.4.54-d")
    environ = _environ(tmp_path, [tmp_path / "bin"])
    globs = [str(tmp_path / "opt" / "nsight-systems" / "*" / "bin" / "nsys")]

    found = find_nsys(environ=environ, globs=globs)
    assert found.path == in_folder
    assert found.version.parts == (2024, 2, 1, 106)

    listed = {c.path: c for c in nsys_tool.candidates(environ, globs)}
    assert set(listed) == {on_path, in_folder, older_folder, cached}
    assert listed[on_path].source == "PATH" and listed[cached].source == "nsysan cache"
    assert str(listed[older_folder].version) == "2023.1.1.127-ccc"

    # Without the install folder, the cache's 2023.4 beats PATH's 2022.1.
    assert find_nsys(environ=environ, globs=[]).path == cached
    # NSYSAN_CACHE moves the cache, as in scripts/install-nsys.
    moved = fake_nsys(tmp_path / "c2" / "nsys-y" / "target-linux-x64" / "nsys", "2023.2.1.1-e")
    assert find_nsys(environ={**environ, "NSYSAN_CACHE": str(tmp_path / "c2")}, globs=[]).path == moved


def test_explicit_and_env_win_over_newer(tmp_path: Path) -> None:
    newest = fake_nsys(tmp_path / "new" / "nsys", "2025.1.1.1-n")
    explicit = fake_nsys(tmp_path / "old" / "target-linux-x64" / "nsys", "2021.5.1.1-o")
    env_one = fake_nsys(tmp_path / "env" / "nsys", "2022.2.1.1-p")
    environ = _environ(tmp_path, [tmp_path / "new"])
    assert find_nsys(environ=environ, globs=[]).path == newest
    chosen = find_nsys(explicit, environ={**environ, "NSYS": str(env_one)}, globs=[])
    assert (chosen.path, chosen.source) == (explicit, "--nsys")
    # An install folder works as --nsys too.
    assert find_nsys(tmp_path / "old", environ=environ, globs=[]).path == explicit
    by_env = find_nsys(environ={**environ, "NSYS": str(env_one)}, globs=[])
    assert (by_env.path, by_env.source, str(by_env.version)) == (env_one, "NSYS", "2022.2.1.1-p")


def test_broken_and_missing_nsys(tmp_path: Path) -> None:
    broken = tmp_path / "bin" / "nsys"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries: libfoo.so' >&2\nexit 127\n")
    broken.chmod(0o755)
    environ = _environ(tmp_path, [tmp_path / "bin"])
    (candidate,) = nsys_tool.candidates(environ, [])
    assert candidate.version is None and "libfoo.so" in candidate.error
    with pytest.raises(NsysNotFoundError, match="nsys not found: install Nsight Systems"):
        find_nsys(environ=environ, globs=[])
    with pytest.raises(NsysNotFoundError, match="not a working nsys.*libfoo"):
        find_nsys(broken, environ=environ, globs=[])
    with pytest.raises(NsysNotFoundError, match=r"--nsys .*nowhere/nsys: no such file"):
        find_nsys(tmp_path / "nowhere" / "nsys", environ=environ, globs=[])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NsysNotFoundError, match=r"NSYS .*empty: folder holds no nsys"):
        find_nsys(environ={**environ, "NSYS": str(tmp_path / "empty")}, globs=[])


@pytest.mark.parametrize("which", ["nsys", "nsys_2022"])
def test_real_nsys_version_and_export_types(which: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(which)
    printed = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    helped = subprocess.run([path, "export", "--help"], capture_output=True, text=True, timeout=60).stdout
    found = find_nsys(path)
    assert str(found.version) in printed
    assert found.version == parse_version(printed)
    assert found.supports_parquetdir == ("parquetdir" in helped)
    assert ("sqlite" in found.export_types()) and found.version.parts[0] >= 2022
    # The expected releases of scripts/install-nsys, so that the tests above test what they claim to.
    assert found.version.release == {"nsys": "2023.4", "nsys_2022": "2022.4"}[which]
    importer = found.importer()
    assert importer is not None and importer.name == "QdstrmImporter"


# Excerpts of `nsys export --help`: 2025.3 mentions --type=json under another option before listing the types.
HELP_2025 = """	--include-json=
           Please note that this flag has nothing to do with JSON exports,
           (i.e. --type=json), nor does it alter the JSON export output.

	-l, --lazy=

           Possible values are 'true' or 'false'.

	-t, --type=

           Possible values are: sqlite, hdf, text, json, info, arrow,
           arrowdir, and parquetdir.

           Export format type.
"""
HELP_2022 = """	-t, --type=

           Possible values are: sqlite, hdf, text, arrow, json, info.
           Export format type.
"""


def test_parse_export_types() -> None:
    assert nsys_tool.parse_export_types(HELP_2025) == (
        "sqlite", "hdf", "text", "json", "info", "arrow", "arrowdir", "parquetdir")
    assert nsys_tool.parse_export_types(HELP_2022) == ("sqlite", "hdf", "text", "arrow", "json", "info")
    # An unknown layout: the known type names it mentions.
    assert nsys_tool.parse_export_types("--type sqlite|parquetdir") == ("sqlite", "parquetdir")
