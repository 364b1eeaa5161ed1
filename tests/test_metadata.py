"""Run metadata: report names, sidecars, and which keys pair runs."""
from __future__ import annotations

import json

import polars as pl

from nsysan.analyses.numa import pair_keys
from nsysan.metadata import parse_name, read_metadata


def test_name_gives_model_gpu_numa_variant():
    assert parse_name("pipeline_gpu3_numa2_vit16x12x1024_pageable") == {
        "model": "vit16x12x1024", "gpu": 3, "numa": 2, "variant": "pageable"}
    assert parse_name("something_else") == {"model": None, "gpu": None, "numa": None, "variant": None}


def test_sidecar_overrides_the_name_but_its_nulls_do_not_erase_it(tmp_path):
    export = tmp_path / "pipeline_gpu0_numa1_vit32x2x128.sqlite"
    (tmp_path / "pipeline_gpu0_numa1_vit32x2x128.meta.json").write_text(json.dumps(
        {"numa": None, "gpu": 4, "batch_size": 10, "gpu_numa_node": None, "config": {"nested": 1}}))
    meta = read_metadata(export)
    assert meta["numa"] == 1            # null in the sidecar: the name's value stands
    assert meta["gpu"] == 4             # a value in the sidecar wins
    assert meta["batch_size"] == 10     # new scalar keys are added
    assert meta["gpu_numa_node"] is None  # a new key may be null
    assert "config" not in meta         # nested objects are not metadata keys


def test_runs_are_paired_on_configuration_not_on_measured_throughput():
    samples = pl.DataFrame({"report": ["a", "b"], "model": ["m", "m"], "numa": [0, 1],
                            "samples_per_s": [100.0, 90.0], "range": ["h2d", "h2d"]})
    keys = pair_keys(samples.with_columns(), ignore=())
    assert "samples_per_s" not in keys and "numa" not in keys and "model" in keys
