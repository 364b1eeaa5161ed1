"""Summary statistics of nanosecond durations, reported in milliseconds.

Percentiles interpolate linearly between the two nearest instances (numpy's default), so ``p50`` is the
median as nsys reports it; ``std`` is the sample standard deviation (n - 1), null for one instance.
"""
from __future__ import annotations

import polars as pl

STATISTICS = ("mean", "p50", "p95", "p99", "min", "max", "std")
NS_PER_MS = 1e6


def describe_ms(durations_ns: pl.Expr, prefix: str) -> list[pl.Expr]:
    """Expressions for ``{prefix}_{mean,p50,p95,p99,min,max,std}`` of a nanosecond column, in ms."""
    ms = durations_ns.cast(pl.Float64) / NS_PER_MS
    return [
        ms.mean().alias(f"{prefix}_mean"),
        ms.quantile(0.5, interpolation="linear").alias(f"{prefix}_p50"),
        ms.quantile(0.95, interpolation="linear").alias(f"{prefix}_p95"),
        ms.quantile(0.99, interpolation="linear").alias(f"{prefix}_p99"),
        ms.min().alias(f"{prefix}_min"),
        ms.max().alias(f"{prefix}_max"),
        ms.std(ddof=1).alias(f"{prefix}_std"),
    ]
