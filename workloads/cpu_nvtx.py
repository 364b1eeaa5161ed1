"""A CPU-only workload that emits a known set of NVTX ranges, for testing nsysan without a GPU.

It emits, per iteration, on the main thread: push/pop ``iteration`` enclosing ``load`` and ``compute``
(``compute`` encloses ``inner``), a push/pop range in the domain ``io`` (``io:write``), and one
start/end range ``epoch`` spanning all iterations. A worker thread emits push/pop ``worker`` ranges.
The counts it emitted are written as JSON to ``--expect`` so tests compare against the workload's own word.

Run:  python workloads/cpu_nvtx.py --iterations 5 --workers 2 --expect expected.json
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import nvtx


def busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def worker_loop(iterations: int) -> None:
    for _ in range(iterations):
        with nvtx.annotate("worker"):
            busy(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--expect", help="write the emitted range counts to this JSON file")
    args = parser.parse_args()

    threads = [threading.Thread(target=worker_loop, args=(args.iterations,)) for _ in range(args.workers)]
    for t in threads:
        t.start()
    epoch = nvtx.start_range("epoch")
    for _ in range(args.iterations):
        with nvtx.annotate("iteration"):
            with nvtx.annotate("load"):
                busy(1)
            with nvtx.annotate("compute"):
                with nvtx.annotate("inner"):
                    busy(2)
            with nvtx.annotate("write", domain="io"):
                busy(0.5)
    nvtx.end_range(epoch)
    for t in threads:
        t.join()

    expected = {
        "iteration": args.iterations, "load": args.iterations, "compute": args.iterations,
        "inner": args.iterations, "io:write": args.iterations, "epoch": 1,
        "worker": args.iterations * args.workers,
    }
    if args.expect:
        with open(args.expect, "w") as f:
            json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
