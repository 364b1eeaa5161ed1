#!/usr/bin/env python3
"""Build a study-sized sweep of reports from the bundled samples: N distinct export files (default 100).

Layout: ``<out>/rep00/pipeline_gpu0_numa0_vit32x6x512.sqlite`` (+ its ``.meta.json`` sidecar),
``<out>/rep01/...``: report i is sample ``i % 5`` in folder ``rep{i // 5}``. So 100 reports are the 5
samples x 20 repetitions, under the samples' own file names.

Why folders rather than new names: nsysan reads run metadata (model, gpu, numa, variant) from the name
``pipeline_gpu{G}_numa{N}_vit{P}x{D}x{H}[_variant]`` (nsysan/metadata.py). A run suffix would land in
``variant`` and split ``--by model,variant`` (``--by-model``) into 100 groups; GPU numbers 0..19 would
invent hardware. The study runner already writes each repetition of a study to its own timestamped
folder under the same names, and nsysan names clashing reports by their relative path (``rep03/...``),
so repetitions in folders are what a real 100-report study looks like, and metadata is unchanged:
``--by model`` gives 4 groups (vit32x6x512 pools the pinned and the ``_pageable`` variant: 40 reports),
``--by model,variant`` 5 groups of 20.

Files are copies by default (distinct inodes, as in a real study; 100 reports are ~80 MiB); ``--link``
makes hard links instead. Either way neither tool may write beside them: bench_sweep.py checks that.
A manifest ``sweep.json`` lists every report with its source and name-derived metadata, parsed here by
the same naming convention (not by importing nsysan, whose internals are being restructured).

    python bench/make_sweep.py                 # -> bench/out/sweep_100/
    python bench/make_sweep.py -n 200 --link
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = ROOT / "nsysan" / "sample"
#: The runner's report-name convention (see nsysan/metadata.py; repeated so the bench needs no nsysan import).
NAME = re.compile(r"^(?P<prefix>[A-Za-z]+)_gpu(?P<gpu>\d+)_numa(?P<numa>\d+)_(?P<model>vit\d+x\d+x\d+)"
                  r"(?:_(?P<variant>.+))?$")


def name_metadata(stem: str) -> dict:
    m = NAME.match(stem)
    if not m:
        raise SystemExit(f"{stem}: not named pipeline_gpu{{G}}_numa{{N}}_vit{{P}}x{{D}}x{{H}}[_variant]")
    return {"model": m["model"], "gpu": int(m["gpu"]), "numa": int(m["numa"]), "variant": m["variant"]}


def default_dir(n: int) -> Path:
    return HERE / "out" / f"sweep_{n}"


def build(n: int, out: Path, source: Path = SAMPLES, link: bool = False) -> dict:
    """Write the sweep (skipped when ``out``'s manifest already describes the same one)."""
    samples = sorted(source.glob("*.sqlite"))
    if not samples:
        raise SystemExit(f"no .sqlite exports in {source}")
    manifest_path = out / "sweep.json"
    want = {"n": n, "source": str(source), "samples": [p.name for p in samples], "link": link}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in want} == want and all((out / r["path"]).exists() for r in manifest["reports"]):
            return manifest
    if out.exists():
        shutil.rmtree(out)
    reports = []
    width = len(str(max(0, (n - 1) // len(samples))))
    for i in range(n):
        sample = samples[i % len(samples)]
        rel = Path(f"rep{i // len(samples):0{max(2, width)}d}") / sample.name
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        (os.link if link else shutil.copyfile)(sample, dest)
        sidecar = sample.with_name(sample.name.removesuffix(".sqlite") + ".meta.json")
        if sidecar.exists():
            (os.link if link else shutil.copyfile)(sidecar, dest.with_name(sidecar.name))
        reports.append({"path": str(rel), "source": sample.name,
                        **name_metadata(sample.name.removesuffix(".sqlite"))})
    manifest = {**want, "reports": reports}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100, help="number of reports (default 100)")
    parser.add_argument("-o", "--output", type=Path, help="folder (default bench/out/sweep_<n>)")
    parser.add_argument("--source", type=Path, default=SAMPLES, help="folder of exports to repeat")
    parser.add_argument("--link", action="store_true", help="hard links instead of copies")
    args = parser.parse_args(argv)
    out = args.output or default_dir(args.n)
    manifest = build(args.n, out, args.source, args.link)
    models: dict[str, int] = {}
    for r in manifest["reports"]:
        key = r["model"] + (f"_{r['variant']}" if r["variant"] else "")
        models[key] = models.get(key, 0) + 1
    size = sum((out / r["path"]).stat().st_size for r in manifest["reports"])
    print(f"{out}: {len(manifest['reports'])} reports ({size / 2**20:.0f} MiB, "
          f"{'hard links' if manifest['link'] else 'copies'}); per model+variant: "
          + ", ".join(f"{k} {v}" for k, v in sorted(models.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
