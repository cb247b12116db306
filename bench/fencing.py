"""Fencing's figures for a hung node-agent (issue 18; docs/fencing.md).

``python -m bench.fencing [--ttl S] [--rounds N]`` starts a local stack (Valkey, the services,
2 node-agents x 1 simulated GPU) in a temp dir with the heartbeat expiry and node timeout set
to ``--ttl`` (the fence's defaults follow it: timeout ttl/2, grace ttl/5), submits a run with
``retry_on_system_failure`` whose command appends ``<resumption index> <time>`` to a file every
100 ms, and once it runs stops its node's agent with SIGSTOP. From that moment (this process's
clock; the command's ``date`` reads the same machine's): the old rank's last line, the moment
its process group was seen gone, and the retry's first line on the other node. The agent is
woken (SIGCONT) and the run stopped; ``--rounds`` times, on the same stack. The old rank must
be gone before the retry starts, every time: the last column says so.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cli.stack import LocalStack, StackConfig
from events import commands
from events.lifecycle import RunState
from events.spec import Compute, RunSpec, Scheduling
from events.status import RunStatus
from services.core import timeouts
from services.core.store import EventStore
from services.node_agent.shim.ondisk import signal_group

NODES = 2
_POLL_S = 0.01
_WITHIN_S = 120.0
USER = "bench@example.com"


@dataclass
class Round:
    last_beat_s: float  # the old rank's last line, after the hang
    gone_s: float  # its process group seen gone
    retry_s: float  # the retry's first line

    @property
    def ordered(self) -> bool:
        return self.last_beat_s < self.retry_s and self.gone_s < self.retry_s


def _new_id() -> str:
    return uuid.uuid4().hex


def _beats(path: Path, index: int) -> list[float]:
    text = path.read_text() if path.exists() else ""
    found = []
    for line in text.splitlines():
        attempt, _, at = line.partition(" ")
        if at and int(attempt) == index:
            found.append(float(at))
    return found


async def _until(probe: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + _WITHIN_S
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {_WITHIN_S:g}s")
        await asyncio.sleep(_POLL_S)  # polling inside a deadline loop


async def _state(store: EventStore, run_id: str) -> RunState:
    state = await store.load_run(run_id)
    assert state is not None
    return state


async def one_round(stack: LocalStack, store: EventStore, path: Path) -> Round:
    run_id = _new_id()
    command = f'while true; do echo "$RESUMPTION_INDEX $(date +%s.%N)" >> {path}; sleep 0.1; done'
    spec = RunSpec(
        name="fence",
        image="mosaicml/pytorch:latest",
        command=command,
        compute=Compute(cluster="local", gpus=1),
        scheduling=Scheduling(retry_on_system_failure=True),
    )
    submit = commands.SubmitRun(actor=USER, run_id=run_id, name=f"fence-{run_id[:6]}", spec=spec)
    await store.update_run(run_id, lambda state: commands.decide(state, submit, _new_id))

    async def running() -> bool:
        return (await _state(store, run_id)).status is RunStatus.RUNNING

    await _until(running, "RUNNING")
    await _until(lambda: len(_beats(path, 0)) >= 3, "first beats")
    [rank] = (await _state(store, run_id)).latest.ranks
    [service] = [name for name in stack.services if stack.node_of(name) == rank.node]
    agent = stack.records()[service].pid
    assert agent is not None
    data_dir = Path(stack.services[service].env["RUNPLANE_DATA_DIR"])
    rank_dir = data_dir / "ranks" / run_id / "0" / "0"
    pgid = int((rank_dir / "command.pid").read_text())

    hung = time.time()
    os.kill(agent, signal.SIGSTOP)
    try:
        await _until(lambda: not signal_group(pgid, 0), "the old rank's end")
        gone = time.time()
        await _until(lambda: _beats(path, 1), "the retry's first beat")
    finally:
        os.kill(agent, signal.SIGCONT)
    result = Round(
        last_beat_s=max(_beats(path, 0)) - hung,
        gone_s=gone - hung,
        retry_s=min(_beats(path, 1)) - hung,
    )
    stop = commands.StopRun(actor=USER, reason="bench")
    await store.update_run(run_id, lambda state: commands.decide(state, stop, _new_id))
    await _until(lambda: _ended(store, run_id), "the run's end")
    return result


async def _ended(store: EventStore, run_id: str) -> bool:
    return (await _state(store, run_id)).status.is_terminal()


async def run(ttl_s: float, rounds: int) -> list[Round]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp) / "stack")
        env = {"RUNPLANE_HEARTBEAT_TTL_S": str(ttl_s), "RUNPLANE_NODE_TIMEOUT_S": str(ttl_s)}
        stack.up(StackConfig(nodes=NODES, gpus_per_node=1, grace_period_s=5, extra_env=env))
        store = EventStore.from_settings(stack.operator_settings())
        try:
            return [await one_round(stack, store, Path(tmp) / f"beats-{i}") for i in range(rounds)]
        finally:
            await store.close()
            stack.down()


def render(ttl_s: float, results: list[Round]) -> str:
    fence = timeouts.fence_timeout_default(ttl_s)
    grace = timeouts.fence_grace_default(ttl_s)
    lines = [
        (
            f"bench.fencing: a hung agent (SIGSTOP), heartbeat expiry {ttl_s:g}s, "
            f"fence timeout {fence:g}s + grace {grace:g}s"
        ),
        "  round  old rank's last line  old rank gone  retry's first line  old gone first",
    ]
    for i, r in enumerate(results):
        lines.append(
            f"  {i:>5}  {r.last_beat_s:>19.2f}s  {r.gone_s:>12.2f}s  {r.retry_s:>17.2f}s  "
            f"{'yes' if r.ordered else 'NO'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttl", type=float, default=timeouts.HEARTBEAT_TTL_S)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(render(args.ttl, asyncio.run(run(args.ttl, args.rounds))))


if __name__ == "__main__":
    main()
