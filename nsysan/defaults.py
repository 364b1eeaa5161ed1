"""The defaults every layer shares: the library's keyword defaults, the CLI's option defaults and the docs.

Standard library only, so that the command line can show them in ``--help`` without importing the analyses
(and with them polars and DuckDB).
"""
from __future__ import annotations

#: Ranges named like this, and everything nested inside them, are warm-up: left out unless asked for.
WARMUP_PATTERN = "warmup_*"
#: The per-batch (or per-step) ranges; the outermost matches are the measured batches.
BATCH_PATTERNS = ("batch_*", "step_*")

#: Copies smaller than this are "tiny": per-copy overhead of a few µs dominates their transfer time.
TINY_BYTES = 64 * 1024
#: A copy group is flagged when at least this share of its copies (by count) are tiny.
TINY_COUNT_PCT = 50.0

#: Idle gaps shorter than this are the classic launch-bound signature (back-to-back launches from C++ or
#: CUDA graphs leave gaps of a few µs).
SHORT_GAP_NS = 10_000
#: Gaps shorter than this are "launch gaps": the GPU waits for the CPU to issue the next op. Eager frameworks
#: spend 10-100 µs of CPU time per op, so their launch gaps exceed SHORT_GAP_NS; stalls on other CPU work
#: (data loading, preprocessing, synchronisation) leave gaps of milliseconds.
LAUNCH_GAP_NS = 100_000
#: A window is launch-bound when the GPU is idle at least this share of it and at least
#: LAUNCH_BOUND_GAP_PCT of that idle time lies in launch gaps.
LAUNCH_BOUND_IDLE_PCT = 50.0
LAUNCH_BOUND_GAP_PCT = 50.0

#: Comparisons: confidence, bootstrap resamples, seed, smallest change a verdict calls, fewest instances.
CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
MIN_EFFECT_PCT = 5.0
MIN_INSTANCES = 5

#: Kernels listed per group in a terminal table (files always get all of them).
TOP_KERNELS = 20
