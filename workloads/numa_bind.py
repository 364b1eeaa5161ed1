"""Bind one torchrun rank to its own NUMA node, then become the rank: ``numactl --cpunodebind=N --membind=N CMD``.

torchrun starts it once per rank (``torchrun --no-python ... python workloads/numa_bind.py --nodes 0,1 -- python
workloads/ddp_train.py ...``); it picks node ``--nodes[LOCAL_RANK]`` and execs numactl, which execs the command,
so the rank keeps this process id (nsys follows it) and nothing stays in between. The node is also put in the
environment (``NSYSAN_BOUND_NUMA_NODE``) for the workload's sidecar.

A bad list, a missing LOCAL_RANK or numactl: one line ``numa_bind: error: ...`` and exit 2.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

PROG = "numa_bind"
BOUND_NODE_ENV = "NSYSAN_BOUND_NUMA_NODE"   # read by dist_common.rank_record


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        fail(message)


def node_for(nodes_text: str, local_rank_text: str | None) -> int:
    """The node of this local rank from ``--nodes`` (one entry per local rank)."""
    try:
        nodes = [int(part) for part in nodes_text.split(",")]
    except ValueError:
        fail(f"--nodes {nodes_text!r}: expected NUMA node numbers such as 0,1")
    if not nodes or min(nodes) < 0:
        fail(f"--nodes {nodes_text!r}: expected NUMA node numbers such as 0,1")
    if local_rank_text is None or not local_rank_text.isdigit():
        fail(f"LOCAL_RANK is {local_rank_text!r}: run under torchrun (one process per rank)")
    local_rank = int(local_rank_text)
    if local_rank >= len(nodes):
        fail(f"--nodes {nodes_text}: no node for local rank {local_rank}")
    return nodes[local_rank]


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", required=True, help="NUMA node per local rank, e.g. 0,1")
    parser.add_argument("--numactl", default="numactl", help="numactl to exec")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the rank's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("no command to run after --")
    node = node_for(args.nodes, os.environ.get("LOCAL_RANK"))
    numactl = shutil.which(args.numactl)
    if numactl is None:
        fail(f"{args.numactl}: not found (install numactl, or run without NUMA binding)")
    os.execve(numactl, [numactl, f"--cpunodebind={node}", f"--membind={node}", *command],
              {**os.environ, BOUND_NODE_ENV: str(node)})


if __name__ == "__main__":
    main()
