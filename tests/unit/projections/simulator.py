"""A small simulator of a cluster's log: many runs interleaved, only what the rules accept.

Driven by a ``random.Random`` (hypothesis hands one in), it plays users (submit, stop,
restart, update, delete through ``events.commands.decide``), the scheduler (queue, place on
one or two nodes, start, terminate, end, retry) and node agents (setup steps, rank exits), plus
node registrations, losses and drains. Every run event is checked with
``events.lifecycle.evolve`` before it is kept, so a history here is one the log could hold. The
clock moves in steps from 0 ms to hours, so attempts cross midnight UTC now and then.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

from events import codec
from events import model as ev
from events.codec import Recorded
from events.commands import DeleteRun, RestartRun, StopRun, SubmitRun, UpdateRun, decide
from events.lifecycle import RunState, evolve
from events.spec import Compute, RunSpec, Scheduling
from events.status import RunStatus
from tests.unit.projections.history import own

S = RunStatus
START_MS = 1_795_550_400_000  # 2026-11-24 20:00 UTC: histories cross midnight
USERS = ("alice@example.com", "bob@example.com", "carol@example.com")
NODES = ("node-a", "node-b", "node-c")
CLUSTER = "c1"
GPU_TYPE = "a100"
SCHEDULER = "scheduler@control-0"
STEPS_MS = (0, 0, 1, 3, 250, 60_000, 1_800_000, 3_600_000)


class Simulator:
    def __init__(self, rng: random.Random, *, runs: int = 6) -> None:
        self.rng = rng
        self.max_runs = runs
        self.now = START_MS
        self.ids = (f"e{i}" for i in itertools.count())
        self.runs: dict[str, RunState] = {}
        self.log: list[Recorded] = []
        self.seq = 0
        self.last_ms = 0
        self.versions: dict[str, int] = {}
        self.nodes_up: dict[str, bool] = {}

    def new_id(self) -> str:
        return next(self.ids)

    # --- the log -------------------------------------------------------------------------

    def emit(self, events: list[ev.AnyEvent]) -> None:
        """Append events as the store does: rules checked, one clock, versions stamped."""
        self.now += self.rng.choice(STEPS_MS)
        for event in events:
            if self.now == self.last_ms:
                self.seq += 1
            else:
                self.last_ms, self.seq = self.now, 0
            event.time = self.now
            if isinstance(event, ev.RunEvent):
                self.runs[event.run_id] = evolve(self.runs.get(event.run_id), own(event))
            version = self.versions.get(event.aggregate, 0) + 1
            self.versions[event.aggregate] = version
            self.log.append(Recorded(f"{self.now}-{self.seq}", version, event))

    def entries(self) -> list[tuple[str, dict[bytes, bytes]]]:
        return encoded(self.log)

    # --- playing -------------------------------------------------------------------------

    def play(self, steps: int) -> list[Recorded]:
        for node in NODES:
            self.register(node)
        for _ in range(steps):
            self.step()
        return self.log

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.04:
            self.node_event()
        elif roll < 0.15 and len(self.runs) < self.max_runs:
            self.submit()
        elif self.runs:
            run = self.runs[self.rng.choice(sorted(self.runs))]
            if not run.deleted:
                self.advance(run)

    def register(self, node: str) -> None:
        self.nodes_up[node] = True
        self.emit(
            [
                ev.NodeRegistered(
                    id=self.new_id(),
                    actor=f"agent@{node}",
                    node=node,
                    cluster=CLUSTER,
                    gpu_type=GPU_TYPE,
                    gpus=8,
                )
            ]
        )

    def node_event(self) -> None:
        node = self.rng.choice(NODES)
        if not self.nodes_up[node]:
            self.register(node)
            return
        self.nodes_up[node] = False
        event: ev.AnyEvent
        if self.rng.random() < 0.5:
            event = ev.NodeLost(
                id=self.new_id(), actor=SCHEDULER, node=node, cluster=CLUSTER, last_seen=self.now
            )
        else:
            event = ev.NodeDrained(
                id=self.new_id(), actor="ops@example.com", node=node, cluster=CLUSTER
            )
        self.emit([event])

    def submit(self) -> None:
        index = len(self.runs)
        nodes = self.rng.choice((1, 1, 2))
        spec = RunSpec(
            name=f"train-{index}",
            image="mosaicml/pytorch:latest",
            command="python train.py",
            compute=Compute(cluster=CLUSTER, gpus=8 * nodes, gpu_type=GPU_TYPE, nodes=nodes),
            scheduling=Scheduling(
                priority=self.rng.choice(("auto", "low", "lowest")),
                max_retries=self.rng.choice((0, 1, 2)),
            ),
            metadata={"team": "nlp"},
        )
        user = self.rng.choice(USERS)
        command = SubmitRun(actor=user, run_id=f"run{index}", name=f"train-{index}-abc", spec=spec)
        self.emit(list(decide(None, command, self.new_id)))

    def user_command(self, run: RunState) -> bool:
        """Maybe a user acts on the run; True if something was appended."""
        roll = self.rng.random()
        user = run.created_by if self.rng.random() < 0.8 else "admin@example.com"
        command: StopRun | RestartRun | DeleteRun | UpdateRun
        if roll < 0.05:
            command = StopRun(actor=user)
        elif roll < 0.08:
            command = UpdateRun(actor=user, priority=self.rng.choice(("auto", "low")))
        elif roll < 0.10:
            command = DeleteRun(actor=user)
        elif roll < 0.25 and run.latest.status.is_terminal():
            command = RestartRun(actor=user)
        else:
            return False
        try:
            events = decide(run, command, self.new_id)
        except Exception:  # refused (e.g. stop of a terminating run): the user sees an error
            return False
        self.emit(list(events))
        return True

    def advance(self, run: RunState) -> None:
        if self.user_command(run):
            return
        attempt = run.latest
        status, a = attempt.status, attempt.index
        base: dict[str, Any] = {"actor": SCHEDULER, "run_id": run.run_id, "attempt": a}
        if run.delete_requested and status.is_terminal():
            self.emit([ev.RunDeleted(id=self.new_id(), **base)])
        elif status is S.PENDING:
            self.emit([ev.AttemptQueued(id=self.new_id(), reason="Insufficient resources", **base)])
        elif status is S.QUEUED:
            self.schedule(run)
        elif status is S.STARTING:
            waiting = [r for r in attempt.ranks if not r.running]
            if waiting and self.rng.random() < 0.9:
                rank = waiting[0]
                agent: dict[str, Any] = {
                    "actor": f"agent@{rank.node}",
                    "rank": rank.rank,
                    "node": rank.node,
                }
                self.emit(
                    [
                        ev.ImagePullStarted(id=self.new_id(), image="img", **base | agent),
                        ev.ImagePullFinished(id=self.new_id(), image="img", **base | agent),
                        ev.RankRunning(id=self.new_id(), **base | agent),
                    ]
                )
            elif not waiting and self.rng.random() < 0.2:
                self.exit_rank(run, failing=self.rng.random() < 0.5, ran=True)
            elif not waiting:
                self.emit([ev.AttemptRunning(id=self.new_id(), **base)])
            else:
                self.exit_rank(run, failing=True)
        elif status is S.RUNNING:
            self.exit_rank(run, failing=self.rng.random() < 0.3)
        elif status is S.TERMINATING:
            self.wind_down(run)
        elif status.is_terminal():
            self.maybe_retry(run)

    def schedule(self, run: RunState) -> None:
        nodes = run.spec.compute.nodes or 1
        chosen = self.rng.sample(NODES, nodes)
        ranks = [
            ev.RankPlacement(rank=i, node=node, gpus=list(range(8)))
            for i, node in enumerate(chosen)
        ]
        self.emit(
            [
                ev.AttemptScheduled(
                    id=self.new_id(),
                    actor=SCHEDULER,
                    run_id=run.run_id,
                    attempt=run.latest.index,
                    cluster=CLUSTER,
                    gpu_type=GPU_TYPE,
                    ranks=ranks,
                )
            ]
        )

    def exit_rank(self, run: RunState, *, failing: bool, ran: bool = False) -> None:
        """A rank exits and the attempt starts TERMINATING; ``ran``: the scheduler saw every
        rank running only after this exit, so RUNNING comes with TERMINATING (as in
        ``services/scheduler/progress.py``)."""
        attempt = run.latest
        live = [r for r in attempt.ranks if not r.exited]
        rank = self.rng.choice(live)
        base: dict[str, Any] = {"run_id": run.run_id, "attempt": attempt.index}
        reason = ev.Reason(category="user", code="Error", exit_code=1, failed_rank=rank.rank)
        exited = ev.RankExited(
            id=self.new_id(),
            actor=f"agent@{rank.node}",
            rank=rank.rank,
            node=rank.node,
            exit_code=1 if failing else 0,
            reason=reason if failing else None,
            **base,
        )
        terminating = ev.AttemptTerminating(
            id=self.new_id(), actor=SCHEDULER, reason=reason if failing else None, **base
        )
        if ran:  # the agent's append, then the scheduler's
            self.emit([exited])
            self.emit([ev.AttemptRunning(id=self.new_id(), actor=SCHEDULER, **base), terminating])
        else:
            self.emit([exited, terminating])

    def wind_down(self, run: RunState) -> None:
        attempt = run.latest
        base: dict[str, Any] = {"run_id": run.run_id, "attempt": attempt.index}
        live = [r for r in attempt.ranks if not r.exited]
        if live:
            rank = live[0]
            self.emit(
                [
                    ev.RankExited(
                        id=self.new_id(),
                        actor=f"agent@{rank.node}",
                        rank=rank.rank,
                        node=rank.node,
                        exit_code=143 if rank.running else None,
                        signal=15 if rank.running else None,
                        **base,
                    )
                ]
            )
            return
        reason = attempt.reason
        ending: ev.AnyRunEvent
        if reason is None:
            ending = ev.AttemptCompleted(id=self.new_id(), actor=SCHEDULER, **base)
        elif reason.category == "stopped":
            ending = ev.AttemptStopped(id=self.new_id(), actor=SCHEDULER, reason=reason, **base)
        else:
            ending = ev.AttemptFailed(id=self.new_id(), actor=SCHEDULER, reason=reason, **base)
        self.emit([ending])

    def maybe_retry(self, run: RunState) -> None:
        attempt = run.latest
        reason = attempt.reason
        if (
            attempt.status is S.FAILED
            and reason is not None
            and reason.category == "user"
            and run.user_failures <= run.spec.scheduling.max_retries
            and not run.delete_requested
        ):
            self.emit(
                [
                    ev.RetryScheduled(
                        id=self.new_id(),
                        actor=SCHEDULER,
                        run_id=run.run_id,
                        attempt=attempt.index + 1,
                        cause="user_failure",
                    )
                ]
            )


def encoded(records: list[Recorded]) -> list[tuple[str, dict[bytes, bytes]]]:
    """The log as the server holds it: encoded entries, aggregate versions stamped."""
    found = []
    for record in records:
        fields = codec.encode(record.event)
        fields[codec.VERSION] = str(record.version).encode()
        found.append((record.position, fields))
    return found


def history(rng: random.Random, steps: int, runs: int = 6) -> list[tuple[str, dict[bytes, bytes]]]:
    """An encoded history of ``steps`` simulator steps over at most ``runs`` runs."""
    return encoded(Simulator(rng, runs=runs).play(steps))


def chunks(items: list[Recorded], rng: random.Random) -> Iterator[list[Recorded]]:
    """``items`` cut into random consecutive pieces (how a writer's appends arrive)."""
    i = 0
    while i < len(items):
        n = rng.randint(1, 12)
        yield items[i : i + n]
        i += n
