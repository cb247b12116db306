"""Decisions per second of the scheduler's pure core: 10,000 queued runs, 1,000 nodes x 8 GPUs.

``python -m bench.placement`` (``--help`` for the sizes). No server: the scheduler's state is
fed synthetic log records, and only the pure functions are timed.

Figures:
- ``place()``: calls per second of the placement function on the 1,000-node capacity.
- first pass: one ``decide`` over the whole queue on an idle cluster; its decisions (placements,
  queue entries) per second.
- steady state: rounds in which a share of the running attempts end and as many new runs
  arrive, so the queue stays at its size; placements per second of ``decide`` time.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections.abc import Sequence
from typing import NamedTuple

from events.codec import Recorded
from events.fit import Shape
from events.model import (
    AnyEvent,
    AttemptCompleted,
    AttemptScheduled,
    AttemptTerminating,
    NodeRegistered,
    RankExited,
    RunSubmitted,
)
from events.spec import Compute, Priority, RunSpec, Scheduling
from services.scheduler.cluster import ClusterState
from services.scheduler.placement import Capacity, place
from services.scheduler.round import decide

CLUSTER = "bench"
GPU_TYPE = "a100"
SIZES = [1, 1, 1, 2, 2, 4, 8, 8, 16, 32]  # GPUs per run: mostly small, a few multi-node


class Log:
    """Stamps versions and times on events, as the log would, and feeds them to the state."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.versions: dict[str, int] = {}
        self.now = 1_700_000_000_000
        self.ids = itertools.count()

    def new_id(self) -> str:
        return f"b{next(self.ids)}"

    def append(self, events: Sequence[AnyEvent]) -> None:
        for event in events:
            self.now += 1
            event.time = self.now
            version = self.versions[event.aggregate] = self.versions.get(event.aggregate, 0) + 1
            self.state.apply(Recorded(f"{self.now}-0", version, event))


def random_spec(rng: random.Random, index: int, cluster: str = CLUSTER) -> RunSpec:
    """A run of the benchmarks' mix: GPUs from ``SIZES``, priority auto/low/lowest (2:1:1),
    a fifth of them preemptible."""
    priority: Priority = rng.choice(["auto", "auto", "low", "lowest"])
    return RunSpec(
        name=f"bench-{index}",
        image="mosaicml/pytorch:latest",
        command="python train.py",
        compute=Compute(cluster=cluster, gpus=rng.choice(SIZES), gpu_type=GPU_TYPE),
        scheduling=Scheduling(priority=priority, preemptible=rng.random() < 0.2),
    )


def submit(log: Log, rng: random.Random, index: int) -> None:
    spec = random_spec(rng, index)
    run_id = f"run{index}"
    log.append(
        [RunSubmitted(id=log.new_id(), actor="bench", run_id=run_id, name=run_id, spec=spec)]
    )


def decide_round(log: Log) -> tuple[int, int, float]:
    """One round as the edge runs it; returns (decisions, placements, seconds in decide)."""
    started = time.perf_counter()
    decisions = decide(log.state, log.now, log.new_id, actor="scheduler@bench")
    elapsed = time.perf_counter() - started
    log.state.clear_dirty()
    placements = 0
    for decision in decisions:
        log.append(decision.events)
        placements += any(isinstance(e, AttemptScheduled) for e in decision.events)
    log.state.drop_settled()
    return len(decisions), placements, elapsed


def finish(log: Log, run_id: str) -> None:
    """The node-agents report every rank exited 0; the attempt completes."""
    run = log.state.runs[run_id]
    attempt = run.latest
    node_events: list[AnyEvent] = [
        AttemptTerminating(id=log.new_id(), actor="bench", run_id=run_id, attempt=attempt.index)
    ]
    node_events += [
        RankExited(
            id=log.new_id(),
            actor="bench",
            run_id=run_id,
            attempt=attempt.index,
            rank=rank.rank,
            node=rank.node,
            exit_code=0,
        )
        for rank in attempt.ranks
    ]
    node_events.append(
        AttemptCompleted(id=log.new_id(), actor="bench", run_id=run_id, attempt=attempt.index)
    )
    log.append(node_events)


def bench_place(nodes: int, gpus: int, calls: int) -> float:
    capacity = Capacity()
    for index in range(nodes):
        capacity.add_node(f"node-{index:04d}", GPU_TYPE, gpus, range(gpus))
    shapes = [Shape(1, 1, GPU_TYPE), Shape(1, 4, GPU_TYPE), Shape(2, gpus, GPU_TYPE)]
    started = time.perf_counter()
    for index in range(calls):
        placement = place(shapes[index % len(shapes)], capacity)
        assert placement is not None
    return calls / (time.perf_counter() - started)


class Figures(NamedTuple):
    first_decisions: int  # the first pass over the whole queue on an idle cluster
    first_placements: int
    first_s: float
    placements: int  # the steady-state rounds
    decisions: int
    decide_s: float
    queued: int  # waiting at the end


def registered(nodes: int, gpus: int) -> Log:
    """A scheduler state that knows ``nodes`` nodes of ``gpus`` GPUs, and nothing else."""
    log = Log(ClusterState())
    for index in range(nodes):
        node = f"node-{index:04d}"
        log.append(
            [
                NodeRegistered(
                    id=log.new_id(),
                    actor=f"agent@{node}",
                    node=node,
                    cluster=CLUSTER,
                    gpu_type=GPU_TYPE,
                    gpus=gpus,
                )
            ]
        )
    return log


def figures(nodes: int, gpus: int, runs: int, rounds: int, seed: int) -> Figures:
    """The first pass over ``runs`` queued runs, then ``rounds`` steady-state rounds."""
    rng = random.Random(seed)
    log = registered(nodes, gpus)
    state = log.state
    submitted = itertools.count()
    for _ in range(runs):
        submit(log, rng, next(submitted))
    first_decisions, first_placements, first_s = decide_round(log)

    for _ in range(runs - len(state.waiting.get(CLUSTER, {}))):
        submit(log, rng, next(submitted))  # the queue is back at its size
    decide_round(log)
    total_placements, total_decisions, total_time = 0, 0, 0.0
    for _ in range(rounds):
        running = sorted(state.active.get(CLUSTER, set()))
        ending = rng.sample(running, max(1, len(running) // 50))
        for run_id in ending:
            finish(log, run_id)
        for _ in range(len(ending)):
            submit(log, rng, next(submitted))
        decisions, placements, elapsed = decide_round(log)
        total_decisions += decisions
        total_placements += placements
        total_time += elapsed
    assert not state.double_booked
    return Figures(
        first_decisions,
        first_placements,
        first_s,
        total_placements,
        total_decisions,
        total_time,
        len(state.waiting.get(CLUSTER, {})),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs kept queued")
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--rounds", type=int, default=50, help="steady-state rounds")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    print(f"place(): {bench_place(args.nodes, args.gpus, 100_000):,.0f} calls/s")
    f = figures(args.nodes, args.gpus, args.runs, args.rounds, args.seed)
    print(
        f"first pass over {args.runs:,} queued runs on {args.nodes:,} x {args.gpus} GPUs: "
        f"{f.first_decisions:,} decisions ({f.first_placements:,} placements) in "
        f"{f.first_s * 1000:.0f} ms = {f.first_decisions / f.first_s:,.0f} decisions/s"
    )
    print(
        f"steady state, {args.rounds} rounds ({f.queued:,} queued at the end): "
        f"{f.placements:,} placements, {f.decisions:,} decisions in "
        f"{f.decide_s * 1000:.0f} ms of decide = {f.placements / f.decide_s:,.0f} "
        f"placements/s, {f.decide_s / args.rounds * 1000:.1f} ms per round"
    )


if __name__ == "__main__":
    main()
