"""Memory of the local stack at rest: each process's resident set, and the total.

``python -m bench.memory [--nodes N]`` starts a local stack as ``mcli dev up`` does
(``cli.stack``: its supervisor, Valkey, the scheduler, the projector, the log-collector, the
API server, N node-agents, each agent's shim fork server) in a temp dir, waits until it is ready
(``mcli dev up``'s own test) and then at rest (every process's RSS the same, within 256 KiB,
over three readings a second apart; at most a minute), and prints per process its RSS (what
``ps`` shows: shared libraries counted in every process that maps them) and its PSS (shared
pages divided among the processes mapping them: the column sums to what the stack takes), then
the totals against the figure of issue 12 before its imports were cut: 330 MiB RSS for 2 nodes
(57 MiB per service).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.processes import children, pss_kib, rss_kib
from cli.commands.dev import wait_ready
from cli.stack import LocalStack, StackConfig

BEFORE_MIB = 330  # issue 12, item 6: `mcli dev up --nodes 2` at 3660576, all of it
BEFORE_NODES = 2
_REST_WITHIN_S = 60.0
_STILL_KIB = 256


def processes(stack: LocalStack) -> dict[str, int]:
    """Every process of the stack by name: the supervisor, the server, each service, each
    service's children."""
    found: dict[str, int] = {}
    if (supervisor := stack.supervisor()) is not None:
        found["supervisor"] = supervisor.pid
    if (server := stack.server_pid()) is not None:
        found["valkey"] = server
    for name, pid in stack.status().items():
        if pid is None:
            raise RuntimeError(f"{name} is not running: see {stack.log_of(name)}")
        found[name] = pid
        for child in children(pid):
            found[f"{name}/{_module(child)}"] = child
    return found


def _module(pid: int) -> str:
    """What a child runs: the last part of its ``-m`` module, else its program."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    if "-m" in argv:
        return argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
    return Path(argv[0]).name


async def at_rest(stack: LocalStack) -> tuple[dict[str, int], bool]:
    """The stack's processes once their RSS holds still (True), or after the deadline (False)."""
    deadline = time.monotonic() + _REST_WITHIN_S
    readings: list[dict[int, int]] = []
    while True:
        found = processes(stack)
        readings = [*readings[-2:], {pid: rss_kib(pid) for pid in found.values()}]
        if len(readings) == 3 and all(
            max(r.get(pid, 0) for r in readings) - min(r.get(pid, 0) for r in readings)
            <= _STILL_KIB
            for pid in found.values()
        ):
            return found, True
        if time.monotonic() > deadline:
            return found, False
        await asyncio.sleep(1.0)


async def main(nodes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp) / "stack")
        config = StackConfig(nodes=nodes)
        stack.up(config)
        try:
            await wait_ready(stack, config)
            found, still = await at_rest(stack)
            figures = {name: (rss_kib(pid), pss_kib(pid)) for name, pid in found.items()}
        finally:
            stack.down()

    print(f"local stack, {nodes} nodes, at rest{'' if still else ' (not still after 60 s)'}:")
    print(f"  {'process':<28} {'RSS MiB':>8} {'PSS MiB':>8}")
    for name, (rss, pss) in figures.items():
        print(f"  {name:<28} {rss / 1024:8.1f} {pss / 1024:8.1f}")
    rss_mib = sum(rss for rss, _ in figures.values()) / 1024
    pss_mib = sum(pss for _, pss in figures.values()) / 1024
    print(f"  {'total':<28} {rss_mib:8.1f} {pss_mib:8.1f}")
    if nodes == BEFORE_NODES:
        print(
            f"RSS in all: {rss_mib:.0f} MiB against {BEFORE_MIB} MiB before the cuts "
            f"({rss_mib / BEFORE_MIB:.2f}x)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=BEFORE_NODES, help="node-agents (default 2)")
    args = parser.parse_args()
    asyncio.run(main(args.nodes))
