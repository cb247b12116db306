"""A scheduler's state driven as its edge drives it, with the log kept in memory.

``World`` plays the log (versions, the log's clock), the users (commands), the node-agents
(rank events) and the scheduler's edge (decide, clear, append each decision, drop settled
runs). Every event is also folded by an independent oracle with the lifecycle rules, so a
decision the rules refuse fails the test where it happens.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from events import commands
from events.codec import Recorded
from events.lifecycle import RunState, evolve
from events.model import (
    AnyEvent,
    NodeCordoned,
    NodeDrained,
    NodeDrainRequested,
    NodeGpuFailed,
    NodeRegistered,
    NodeUncordoned,
    RankExited,
    RankRunning,
    Reason,
    RunEvent,
)
from events.spec import Compute, Priority, RunSpec, Scheduling
from events.status import RunStatus
from services.scheduler.cluster import Applied, ClusterState
from services.scheduler.round import decide

ACTOR = "scheduler@test"
USER = "alice@example.com"


class World:
    def __init__(self, cluster: str = "c1") -> None:
        self.cluster = cluster
        self.state = ClusterState()
        self.now = 1_700_000_000_000
        self.versions: dict[str, int] = {}
        self.oracle: dict[str, RunState] = {}
        self.log: list[AnyEvent] = []
        self.records: list[Recorded] = []
        self.node_gpus: dict[str, int] = {}
        self._ids = itertools.count()
        self._runs = itertools.count()

    def new_id(self) -> str:
        return f"ev{next(self._ids)}"

    # --- the log --------------------------------------------------------------------------

    def record(self, events: Sequence[AnyEvent]) -> list[Recorded]:
        records = []
        for event in events:
            self.now += 1
            event.time = self.now
            aggregate = event.aggregate
            if isinstance(event, RunEvent):
                twin: Any = msgspec.convert(msgspec.to_builtins(event), type(event))
                self.oracle[event.run_id] = evolve(self.oracle.get(event.run_id), twin)
            version = self.versions[aggregate] = self.versions.get(aggregate, 0) + 1
            records.append(Recorded(f"{self.now}-0", version, event))
            self.log.append(event)
        self.records += records
        for record in records:
            applied = self.state.apply(record)
            if applied is Applied.GAP:  # as the edge does: fold the aggregate's history again
                aggregate = record.event.aggregate
                history = [r for r in self.records if r.event.aggregate == aggregate]
                self.state.reload(aggregate, history)
                break
            assert applied is Applied.APPLIED, record
        return records

    def step(
        self,
        silent: Collection[str] = (),
        *,
        watched: int = 0,
        quiet: int | None = None,
        silent_share: float = 1.0,
    ) -> list[AnyEvent]:
        """One round: decide, clear the dirty marks, append every decision."""
        decisions = decide(
            self.state,
            self.now,
            self.new_id,
            actor=ACTOR,
            silent=silent,
            watched=watched,
            quiet=quiet,
            silent_share=silent_share,
        )
        self.state.clear_dirty()
        appended: list[AnyEvent] = []
        seen: set[str] = set()
        for decision in decisions:
            assert decision.aggregate not in seen, f"two decisions for {decision.aggregate}"
            seen.add(decision.aggregate)
            assert decision.expected_version == self.versions.get(decision.aggregate, 0)
            self.record(decision.events)
            appended += decision.events
        self.state.drop_settled()
        return appended

    def settle(self, silent: Collection[str] = ()) -> list[AnyEvent]:
        """Rounds until the scheduler has nothing more to say."""
        appended: list[AnyEvent] = []
        for _ in range(20):
            step = self.step(silent)
            if not step:
                return appended
            appended += step
        raise AssertionError("the scheduler never settles")

    # --- node-agents and operators --------------------------------------------------------

    def register(
        self,
        node: str,
        gpus: int = 8,
        gpu_type: str | None = "a100",
        cluster: str | None = None,
        gpu_uuids: list[str] | None = None,
    ) -> None:
        self.node_gpus[node] = gpus
        event = NodeRegistered(
            id=self.new_id(),
            actor=f"node-agent@{node}",
            node=node,
            cluster=cluster or self.cluster,
            gpu_type=gpu_type,
            gpus=gpus,
            cpus=32,
            gpu_uuids=gpu_uuids or [],
        )
        self.record([event])

    def drain(self, node: str) -> None:
        cluster = self.state.nodes[node].cluster
        self.record([NodeDrained(id=self.new_id(), actor="ops", node=node, cluster=cluster)])

    def cordon(self, node: str, reason: str = "bad fan") -> None:
        cluster = self.state.nodes[node].cluster
        self.record(
            [
                NodeCordoned(
                    id=self.new_id(), actor="admin", node=node, cluster=cluster, reason=reason
                )
            ]
        )

    def drain_request(self, node: str, reason: str = "kernel", grace_ms: int | None = None) -> None:
        cluster = self.state.nodes[node].cluster
        event = NodeDrainRequested(
            id=self.new_id(),
            actor="admin",
            node=node,
            cluster=cluster,
            reason=reason,
            grace_ms=grace_ms,
        )
        self.record([event])

    def uncordon(self, node: str) -> None:
        cluster = self.state.nodes[node].cluster
        self.record([NodeUncordoned(id=self.new_id(), actor="admin", node=node, cluster=cluster)])

    def gpu_failed(self, node: str, gpu: int, error: str = "Xid 79") -> None:
        cluster = self.state.nodes[node].cluster
        uuid = f"GPU-{node}-{gpu}"
        failed = NodeGpuFailed(
            id=self.new_id(),
            actor=f"node-agent@{node}",
            node=node,
            cluster=cluster,
            gpu=gpu,
            gpu_uuid=uuid,
            error=error,
        )
        self.record([failed])

    def running(self, run_id: str) -> None:
        """Every rank of the run's latest attempt starts its command."""
        attempt = self.oracle[run_id].latest
        for rank in attempt.ranks:
            if not rank.running and not rank.exited:
                self.record([self._rank(RankRunning, run_id, rank.rank)])

    def exit(
        self, run_id: str, rank: int = 0, code: int | None = 0, reason: Reason | None = None
    ) -> None:
        self.record([self._rank(RankExited, run_id, rank, exit_code=code, reason=reason)])

    def exit_all(self, run_id: str, code: int | None = 0) -> None:
        for rank in self.oracle[run_id].latest.ranks:
            if not rank.exited:
                self.exit(run_id, rank.rank, code)

    def _rank(self, cls: Any, run_id: str, rank: int, **fields: Any) -> Any:
        attempt = self.oracle[run_id].latest
        node = attempt.ranks[rank].node
        return cls(
            id=self.new_id(),
            actor=f"node-agent@{node}",
            run_id=run_id,
            attempt=attempt.index,
            rank=rank,
            node=node,
            **fields,
        )

    # --- users ------------------------------------------------------------------------------

    def submit(
        self,
        gpus: int = 1,
        *,
        nodes: int | None = None,
        gpu_type: str | None = None,
        priority: Priority = "auto",
        preemptible: bool = False,
        max_retries: int = 0,
        retry_on_system_failure: bool = False,
        max_duration: float | None = None,
        cluster: str | None = None,
    ) -> str:
        run_id = f"run{next(self._runs)}"
        spec = RunSpec(
            name="train",
            image="mosaicml/pytorch:latest",
            command="python train.py",
            compute=Compute(
                cluster=cluster or self.cluster, gpus=gpus, nodes=nodes, gpu_type=gpu_type
            ),
            scheduling=Scheduling(
                priority=priority,
                preemptible=preemptible,
                max_retries=max_retries,
                retry_on_system_failure=retry_on_system_failure,
                max_duration=max_duration,
            ),
        )
        command = commands.SubmitRun(actor=USER, run_id=run_id, name=f"train-{run_id}", spec=spec)
        self.record(commands.decide(None, command, self.new_id))
        return run_id

    def command(self, run_id: str, command: commands.Command) -> None:
        self.record(commands.decide(self.oracle[run_id], command, self.new_id))

    # --- reading ----------------------------------------------------------------------------

    def status(self, run_id: str) -> RunStatus:
        return self.oracle[run_id].status

    def placement(self, run_id: str) -> list[tuple[str, list[int]]]:
        return [(rank.node, rank.gpus) for rank in self.oracle[run_id].latest.ranks]

    def held(self) -> dict[tuple[str, int], str]:
        """(node, GPU) -> run, from the oracle; fails on a GPU held twice."""
        held: dict[tuple[str, int], str] = {}
        for run_id, run in self.oracle.items():
            if not run.latest.status.is_active():
                continue
            for rank in run.latest.ranks:
                for gpu in rank.gpus:
                    key = (rank.node, gpu)
                    assert key not in held, f"GPU {key} held by {held.get(key)} and {run_id}"
                    held[key] = run_id
        return held

    def events_of(self, run_id: str, *types: type[AnyEvent]) -> list[Any]:
        return [
            event
            for event in self.log
            if isinstance(event, RunEvent)
            and event.run_id == run_id
            and (not types or isinstance(event, types))
        ]
