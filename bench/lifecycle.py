"""Runs through the whole stack: latency on an idle cluster and throughput of trivial runs.

``python -m bench.lifecycle [--runs N] [--burst N]`` starts a local stack (Valkey, scheduler,
projector, log-collector, 4 node-agents x 8 simulated GPUs) in a temp dir and measures, from the
log's own timestamps (one clock, no polling error):
- latency: N runs of ``true`` submitted one after another on an idle cluster (each once the
  last has ended and nothing has happened for ``IDLE_S``), submit -> RUNNING and submit ->
  COMPLETED, p50 and p99, and the steps between;
- throughput: a burst of trivial 1-GPU runs submitted at once, runs/s from the first
  submission to the last completion, and each process's CPU over the burst per run (its
  start-up and the latency runs left out: what a run costs once the stack is up).
The baseline is the log's own append latency on the same server, taken right before each
latency run (one ``run.metadata_updated`` append through the store, to a run that has ended:
nothing reacts to it), so both figures see the same machine; the ratio is of their p50s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.processes import cpu_s, machine_cpu_s
from cli.stack import LocalStack, StackConfig
from events import commands
from events.model import (
    AttemptCompleted,
    AttemptFailed,
    AttemptRunning,
    AttemptScheduled,
    ImagePullStarted,
    NodeRegistered,
)
from events.spec import Compute, RunSpec
from services.core.store import EventStore

NODES, GPUS = 4, 8
#: The quiet before each latency run's submission: longer than the scheduler's round pacing.
IDLE_S = 0.1


def _spec() -> RunSpec:
    return RunSpec(
        name="bench",
        image="mosaicml/pytorch:latest",
        command="true",
        compute=Compute(cluster="local", gpus=1),
    )


async def _submit(store: EventStore, n: int) -> str:
    run_id = f"bench{n:06d}{time.monotonic_ns() % 10**6:06d}"
    command = commands.SubmitRun(actor="bench", run_id=run_id, name=f"bench-{n}", spec=_spec())
    await store.update_run(run_id, lambda state: commands.decide(state, command, _new_id))
    return run_id


async def _append_ms(store: EventStore, run_id: str, n: int) -> float:
    """One append's latency, ms: a metadata update of an ended run (nothing reacts to it)."""
    command = commands.UpdateMetadata(actor="bench", metadata={"baseline": n})
    started = time.perf_counter()
    await store.update_run(run_id, lambda state: commands.decide(state, command, _new_id))
    return (time.perf_counter() - started) * 1000


_counter = iter(range(10**9))


def _new_id() -> str:
    return f"e{next(_counter)}-{time.monotonic_ns()}"


async def _times(store: EventStore) -> dict[str, dict[str, int]]:
    """Per run: the log time of submission, RUNNING and the end."""
    seen: dict[str, dict[str, int]] = {}
    async for record in store.replay():
        event = record.event
        run_id = getattr(event, "run_id", None)
        if run_id is None:
            continue
        times = seen.setdefault(run_id, {})
        times.setdefault("submitted", event.time)
        if isinstance(event, AttemptScheduled):
            times["scheduled"] = event.time
        elif isinstance(event, ImagePullStarted):  # in the rank's setup's first append
            times["setup"] = event.time
        elif isinstance(event, AttemptRunning):
            times["running"] = event.time
        elif isinstance(event, (AttemptCompleted, AttemptFailed)):
            times["ended"] = event.time
    return seen


async def _wait_ended(store: EventStore, run_ids: list[str], within_s: float) -> None:
    wanted = set(run_ids)
    deadline = time.monotonic() + within_s
    after = "0"
    while wanted:
        for record in await store.read_log(after=after, count=10_000):
            after = record.position
            if isinstance(record.event, (AttemptCompleted, AttemptFailed)):
                wanted.discard(record.event.run_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted)} runs did not end within {within_s}s")
        await asyncio.sleep(0.01)


async def _wait_nodes(store: EventStore) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        nodes = {r.event.node async for r in store.replay() if isinstance(r.event, NodeRegistered)}
        if len(nodes) >= NODES:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("nodes did not register")


def _cpu(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of each process of the stack, Valkey's included."""
    cpu = {name: cpu_s(pid) for name, pid in stack.status().items() if pid}
    if (server := stack.server_pid()) is not None:
        cpu["valkey"] = cpu_s(server)
    return cpu


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


async def main(runs: int, burst: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp) / "stack")
        stack.up(StackConfig(nodes=NODES, gpus_per_node=GPUS, grace_period_s=5))
        store = EventStore.from_settings(stack.operator_settings())
        try:
            await _wait_nodes(store)
            baseline_run = await _submit(store, 900_000)
            await _wait_ended(store, [baseline_run], 60)
            appends_ms: list[float] = []
            latency_ids = []
            for n in range(runs):
                appends_ms.append(await _append_ms(store, baseline_run, n))
                # An idle cluster: whatever the last append woke has had its turn (the
                # scheduler's rounds are at least RUNPLANE_ROUND_MIN_MS apart).
                await asyncio.sleep(IDLE_S)  # allowed: the idle gap the figure is defined by
                run_id = await _submit(store, n)
                latency_ids.append(run_id)
                await _wait_ended(store, [run_id], 60)
            before, machine, client = _cpu(stack), machine_cpu_s(), time.process_time()
            burst_ids = await asyncio.gather(*(_submit(store, 100_000 + n) for n in range(burst)))
            await _wait_ended(store, list(burst_ids), 600)
            after, machine = _cpu(stack), machine_cpu_s() - machine
            client = time.process_time() - client
            cpu = {name: after[name] - before.get(name, 0.0) for name in after}
            times = await _times(store)
        finally:
            await store.close()
            stack.down()

    append_ms = statistics.median(appends_ms)
    to_running = [times[r]["running"] - times[r]["submitted"] for r in latency_ids]
    to_end = [times[r]["ended"] - times[r]["submitted"] for r in latency_ids]
    first = min(times[r]["submitted"] for r in burst_ids)
    last = max(times[r]["ended"] for r in burst_ids)
    rate = burst / ((last - first) / 1000)
    print(f"stack: {NODES} node-agents x {GPUS} simulated GPUs, process executor")
    print(
        f"baseline: one append through the store takes {append_ms:.2f} ms "
        f"(p50 of {runs}, one before each latency run)"
    )
    print(f"{'figure':<44} {'p50':>9} {'p99':>9}  ratio to one append (p50)")
    for label, values in (
        ("submit -> RUNNING (ms)", to_running),
        ("submit -> COMPLETED (ms)", to_end),
    ):
        p50, p99 = _pct(values, 0.5), _pct(values, 0.99)
        print(f"{label + f', {runs} runs':<44} {p50:>9.0f} {p99:>9.0f}  {p50 / append_ms:.1f}x")
    steps = (
        ("submitted", "scheduled", "the scheduler"),
        ("scheduled", "setup", "the agent, to its setup's first append"),
        ("setup", "running", "the rank's setup and start, to RUNNING"),
        ("running", "ended", "the command, its exit, the attempt's end"),
    )
    print("  of which (p50, ms):", end="")
    for start, end, what in steps:
        spans = [times[r][end] - times[r][start] for r in latency_ids]
        print(f" {what} {_pct(spans, 0.5):.0f};", end="")
    print()
    seconds = (last - first) / 1000
    print(f"throughput: {burst} trivial 1-GPU runs in {seconds:.1f} s: {rate:.1f} runs/s")
    print(f"(mean submit -> COMPLETED over the latency runs: {statistics.mean(to_end):.0f} ms)")
    print(f"CPU per run by process (ms, over the burst of {burst}; ranks' shims not included):")
    for name, seconds in sorted(cpu.items(), key=lambda item: -item[1]):
        print(f"  {name:<16} {seconds / burst * 1000:8.1f}")
    stack_s = sum(cpu.values())
    print(f"  {'all':<16} {stack_s / burst * 1000:8.1f}")
    print(f"this bench's client (submitting, waiting): {client / burst * 1000:.1f} ms per run")
    print(
        f"the machine, busy over the burst: {machine / burst * 1000:.1f} ms per run; less the "
        f"above, {(machine - stack_s - client) / burst * 1000:.1f} ms per run: the ranks' shims "
        "and commands, the kernel's own threads, and anything else running"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=100, help="runs for the latency figures")
    parser.add_argument("--burst", type=int, default=1000, help="runs for the throughput figure")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.burst))
