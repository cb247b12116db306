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

Then the floor under those figures: what an interpreter holds once it has imported each layer a
service is built on (Python with its site, asyncio, redis-py, pydantic with pydantic-settings,
structlog with prometheus_client, FastStream), each layer on top of the ones before it, in a
fresh interpreter, with what ``services.core.imports`` hides hidden as a service hides it; and
what the stack's processes would hold at that floor alone, before any of runplane's own code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.processes import children, pss_kib, rss_kib
from cli.stack import LocalStack, StackConfig
from cli.stackready import wait_ready

BEFORE_MIB = 330  # issue 12, item 6: `mcli dev up --nodes 2` at 3660576, all of it
BEFORE_NODES = 2
_REST_WITHIN_S = 60.0
_STILL_KIB = 256

# The layers a service is built on, in the order a service imports them: a name, the modules.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python (site, the editable install)", ()),
    ("asyncio (with ssl, subprocess)", ("asyncio",)),
    ("redis-py (asyncio client)", ("redis.asyncio",)),
    ("pydantic, pydantic-settings", ("pydantic", "pydantic_settings")),
    ("structlog, prometheus_client", ("structlog", "prometheus_client")),
    ("faststream (redis)", ("faststream", "faststream.redis")),
)


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


def layers() -> list[tuple[str, float]]:
    """Each layer's name and the RSS (MiB) of a fresh interpreter that has imported it and the
    layers before it, hiding what a service on the broker hides."""
    code = (
        "import importlib, json, sys\n"
        "from services.core.imports import BROKER_UNUSED, hide_unused\n"
        "hide_unused(*BROKER_UNUSED)\n"
        # its own reading of VmRSS, not bench.processes.rss_kib: that module imports asyncio,
        # which would count in the first layer
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1])\n"
        "held = []\n"
        f"for modules in {[modules for _, modules in LAYERS]!r}:\n"
        "    for name in modules:\n"
        "        importlib.import_module(name)\n"
        "    held.append(rss())\n"
        "print(json.dumps(held))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    held: list[int] = json.loads(done.stdout)
    return [(name, kib / 1024) for (name, _), kib in zip(LAYERS, held, strict=True)]


def floor(found: dict[str, float], held: list[tuple[str, float]], nodes: int) -> float:
    """What the stack's processes would hold at the floor of the layers each stands on (MiB):
    the supervisor and the fork servers on the standard library (Python alone), the projector
    and the API server on every layer but FastStream, the scheduler, the log-collector and
    each node-agent on FastStream too; Valkey as it is."""
    python, *_, below_broker, broker = (mib for _, mib in held)
    return (
        found.get("valkey", 0.0)
        + python * (1 + nodes)  # the supervisor, each node's fork server
        + below_broker * 2  # the projector, the API server
        + broker * (2 + nodes)  # the scheduler, the log-collector, each node-agent
    )


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
    held = layers()
    print("\nthe floor: a fresh interpreter holding each layer and the ones above it:")
    print(f"  {'layer':<38} {'RSS MiB':>8} {'added':>8}")
    before = 0.0
    for name, mib in held:
        print(f"  {name:<38} {mib:8.1f} {mib - before:+8.1f}")
        before = mib
    least = floor({name: rss / 1024 for name, (rss, _) in figures.items()}, held, nodes)
    print(
        f"the stack's {len(figures)} processes at that floor alone: {least:.0f} MiB RSS, "
        f"before any of runplane's code ({rss_mib - least:.0f} MiB of the {rss_mib:.0f} is "
        "runplane's own)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=BEFORE_NODES, help="node-agents (default 2)")
    args = parser.parse_args()
    asyncio.run(main(args.nodes))
