"""What an export holds: versions and row counts of the tables analyses read."""
from __future__ import annotations

import polars as pl

from nsysan.load import Report


def inventory(report: Report) -> pl.DataFrame:
    """One row: ``nsys_version``, ``export_schema``, ``nvtx_ranges``, ``kernels``, ``memcpys``, ``memsets``,
    ``cuda_api_calls``, ``gpus``."""
    counts = report.sql(
        "SELECT (SELECT count(*) FROM nvtx_ranges), (SELECT count(*) FROM kernels), (SELECT count(*) FROM memcpy),"
        " (SELECT count(*) FROM memset), (SELECT count(*) FROM runtime), (SELECT count(*) FROM gpus)").fetchone()
    version = report.version
    return pl.DataFrame({
        "nsys_version": [version.product], "export_schema": [".".join(map(str, version.schema or ())) or None],
        "nvtx_ranges": [counts[0]], "kernels": [counts[1]], "memcpys": [counts[2]], "memsets": [counts[3]],
        "cuda_api_calls": [counts[4]], "gpus": [counts[5]],
    })
