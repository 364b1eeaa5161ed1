"""Build the sample sweep shipped in the package from a folder of untrimmed H100 exports and their truth files.

The exports are copied whole except for tables nsysan and the ``nsys stats`` reports we reconcile with
never read (OS runtime trace, call chains, profiler overhead, ...), then vacuumed. The truth JSONs go to
tests/fixtures/h100/ (its README.md says what they are). Run from the repository root:
python scripts/make_sample.py SOURCE_DIR
To trim one export the same way:  python scripts/make_sample.py --trim SOURCE.sqlite TARGET.sqlite
"""
from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

DROP = ("OSRT_API", "OSRT_CALLCHAINS", "PROFILER_OVERHEAD", "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION",
        "CUPTI_ACTIVITY_KIND_CUDA_EVENT", "DIAGNOSTIC_EVENT", "TARGET_INFO_SYSTEM_ENV", "ProcessStreams",
        "ANALYSIS_FILE", "SCHED_EVENTS", "COMPOSITE_EVENTS", "SAMPLING_CALLCHAINS")


def trim_export(export: Path, target: Path) -> None:
    """Copy ``export`` to ``target`` without the tables in DROP, vacuumed; written under a temporary name."""
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(export, tmp)
    con = sqlite3.connect(tmp)
    for table in DROP:
        con.execute(f'DROP TABLE IF EXISTS "{table}"')
    con.commit()
    con.execute("VACUUM")
    con.close()
    tmp.replace(target)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--trim":
        trim_export(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/make_sample.py SOURCE_DIR | --trim SOURCE.sqlite TARGET.sqlite")
    source = Path(sys.argv[1])
    sample = Path("nsysan/sample")
    truth = Path("tests/fixtures/h100")
    truth.mkdir(parents=True, exist_ok=True)
    for export in sorted(source.glob("*.sqlite")):
        target = sample / export.name
        trim_export(export, target)
        shutil.copyfile(export.with_suffix(".truth.json"), truth / export.with_suffix(".truth.json").name)
        print(f"{target}: {target.stat().st_size / 1e6:.2f} MB (from {export.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
