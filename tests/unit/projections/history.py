"""Hand-written histories for the folds' examples: events at given times, as the log records
them (positions from the time, aggregate versions counted)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from events import model as ev
from events.codec import Recorded
from events.lifecycle import RunState, evolve
from events.spec import Compute, RunSpec, Scheduling
from projections.base import Projection, Row, takes

USER = "alice@example.com"
SCHEDULER = "scheduler@control-0"
USER_ERROR = ev.Reason(category="user", code="Error", exit_code=1, failed_rank=1)


def at(text: str) -> int:
    """``"2026-11-24 10:00:00.000"`` (UTC) in ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class History:
    """Events appended at given times; ``records`` is the log, checked by the rules."""

    def __init__(self) -> None:
        self.records: list[Recorded] = []
        self.versions: dict[str, int] = {}
        self.states: dict[str, RunState] = {}
        self.ids = 0
        self.last = (0, -1)

    def add(self, when: int | str, *events: ev.AnyEvent) -> None:
        time = at(when) if isinstance(when, str) else when
        for event in events:
            event.time = time
            seq = self.last[1] + 1 if self.last[0] == time else 0
            self.last = (time, seq)
            if isinstance(event, ev.RunEvent):
                self.states[event.run_id] = evolve(self.states.get(event.run_id), own(event))
            version = self.versions.get(event.aggregate, 0) + 1
            self.versions[event.aggregate] = version
            self.records.append(Recorded(f"{time}-{seq}", version, event))

    def new_id(self) -> str:
        self.ids += 1
        return f"e{self.ids}"

    # --- builders ------------------------------------------------------------------------

    def submit(
        self,
        when: int | str,
        run: str,
        *,
        user: str = USER,
        gpus: int = 16,
        nodes: int | None = 2,
        priority: str = "auto",
        max_retries: int = 0,
        cluster: str = "c1",
    ) -> None:
        spec = RunSpec(
            name=run,
            image="mosaicml/pytorch:latest",
            command="python train.py",
            compute=Compute(cluster=cluster, gpus=gpus, gpu_type="a100", nodes=nodes),
            scheduling=Scheduling(priority=priority, max_retries=max_retries),  # type: ignore[arg-type]
            metadata={"team": "nlp"},
        )
        self.add(
            when,
            ev.RunSubmitted(
                id=self.new_id(), actor=user, run_id=run, name=f"{run}-abcdef", spec=spec
            ),
        )

    def queue(self, when: int | str, run: str, attempt: int = 0, reason: str = "") -> None:
        self.add(
            when,
            ev.AttemptQueued(
                id=self.new_id(),
                actor=SCHEDULER,
                run_id=run,
                attempt=attempt,
                reason=reason or "Insufficient resources",
            ),
        )

    def schedule(
        self,
        when: int | str,
        run: str,
        attempt: int = 0,
        nodes: Iterable[str] = ("n1", "n2"),
        gpus: int = 8,
    ) -> None:
        ranks = [
            ev.RankPlacement(rank=i, node=n, gpus=list(range(gpus))) for i, n in enumerate(nodes)
        ]
        self.add(
            when,
            ev.AttemptScheduled(
                id=self.new_id(),
                actor=SCHEDULER,
                run_id=run,
                attempt=attempt,
                cluster="c1",
                gpu_type="a100",
                ranks=ranks,
            ),
        )

    def start(self, when: int | str, run: str, attempt: int = 0) -> None:
        ranks = self.states[run].latest.ranks
        events: list[ev.AnyEvent] = [self._running(run, r.rank, attempt) for r in ranks]
        events.append(
            ev.AttemptRunning(id=self.new_id(), actor=SCHEDULER, run_id=run, attempt=attempt)
        )
        self.add(when, *events)

    def rank_running(self, when: int | str, run: str, rank: int, attempt: int = 0) -> None:
        self.add(when, self._running(run, rank, attempt))

    def _running(self, run: str, rank: int, attempt: int) -> ev.RankRunning:
        return ev.RankRunning(**self._rank(run, rank, attempt))

    def _exited(
        self, run: str, rank: int, attempt: int, code: int | None, **fields: Any
    ) -> ev.RankExited:
        return ev.RankExited(**self._rank(run, rank, attempt), exit_code=code, **fields)

    def _rank(self, run: str, rank: int, attempt: int) -> dict[str, Any]:
        """What every event of one rank carries: its agent as the actor, and where it runs."""
        node = self.states[run].latest.ranks[rank].node
        return {
            "id": self.new_id(),
            "actor": f"agent@{node}",
            "run_id": run,
            "attempt": attempt,
            "rank": rank,
            "node": node,
        }

    def rank_exited(
        self,
        when: int | str,
        run: str,
        rank: int,
        attempt: int = 0,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        reason: ev.Reason | None = None,
    ) -> None:
        self.add(when, self._exited(run, rank, attempt, exit_code, signal=signal, reason=reason))

    def finish(
        self,
        when: int | str,
        run: str,
        attempt: int = 0,
        *,
        fail: bool = False,
        end: int | str | None = None,
        usage: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """Every rank exits (rank 1 with 1 if ``fail``) at ``when``; the attempt ends at ``end``.
        ``usage``: rank -> (mean GPU utilization %, peak MiB) its node sampled."""
        ranks = self.states[run].latest.ranks
        reason = USER_ERROR if fail else None
        sampled = usage or {}
        exits: list[ev.AnyEvent] = [
            self._exited(
                run,
                r.rank,
                attempt,
                1 if fail and r.rank == 1 else 0,
                reason=reason if fail and r.rank == 1 else None,
                **(
                    {
                        "gpu_utilization": sampled[r.rank][0],
                        "gpu_memory_peak_mib": sampled[r.rank][1],
                    }
                    if r.rank in sampled
                    else {}
                ),
            )
            for r in ranks
        ]
        terminating = ev.AttemptTerminating(
            id=self.new_id(), actor=SCHEDULER, run_id=run, attempt=attempt, reason=reason
        )
        self.add(when, exits[0], terminating, *exits[1:])
        ending: ev.AnyEvent
        if fail:
            ending = ev.AttemptFailed(
                id=self.new_id(), actor=SCHEDULER, run_id=run, attempt=attempt, reason=USER_ERROR
            )
        else:
            ending = ev.AttemptCompleted(
                id=self.new_id(), actor=SCHEDULER, run_id=run, attempt=attempt
            )
        self.add(end if end is not None else when, ending)

    def stop_waiting(self, when: int | str, run: str, attempt: int = 0, user: str = USER) -> None:
        reason = ev.Reason(category="stopped", code="Stopped", message=f"stopped by {user}")
        self.add(
            when,
            ev.StopRequested(id=self.new_id(), actor=user, run_id=run, attempt=attempt),
            ev.AttemptStopped(
                id=self.new_id(), actor=user, run_id=run, attempt=attempt, reason=reason
            ),
        )

    def retry(self, when: int | str, run: str, attempt: int) -> None:
        self.add(
            when,
            ev.RetryScheduled(
                id=self.new_id(), actor=SCHEDULER, run_id=run, attempt=attempt, cause="user_failure"
            ),
        )

    def restart(self, when: int | str, run: str, attempt: int, user: str = USER) -> None:
        self.add(
            when, ev.RestartRequested(id=self.new_id(), actor=user, run_id=run, attempt=attempt)
        )

    def update(self, when: int | str, run: str, **changes: object) -> None:
        self.add(when, ev.UpdateRequested(id=self.new_id(), actor=USER, run_id=run, **changes))  # type: ignore[arg-type]

    def delete(self, when: int | str, run: str, user: str = USER) -> None:
        attempt = self.states[run].latest.index
        self.add(
            when,
            ev.DeleteRequested(id=self.new_id(), actor=user, run_id=run, attempt=attempt),
            ev.RunDeleted(id=self.new_id(), actor=user, run_id=run, attempt=attempt),
        )

    def node(self, when: int | str, node: str, gpus: int = 8, *, state: str = "up") -> None:
        event: ev.AnyEvent
        if state == "up":
            event = ev.NodeRegistered(
                id=self.new_id(),
                actor=f"agent@{node}",
                node=node,
                cluster="c1",
                gpu_type="a100",
                gpus=gpus,
            )
        elif state == "lost":
            event = ev.NodeLost(
                id=self.new_id(), actor=SCHEDULER, node=node, cluster="c1", last_seen=0
            )
        else:
            event = ev.NodeDrained(
                id=self.new_id(), actor="ops@example.com", node=node, cluster="c1"
            )
        self.add(when, event)


def fold(projection: Projection, records: Iterable[Recorded]) -> list[Row]:
    """Apply every record it takes (as the engine does); the rows of every key they changed,
    rendered at the end."""
    changed: set[tuple[str, str]] = set()
    for record in records:
        if takes(projection, type(record.event)):
            changed.update(projection.apply(record))
    return list(projection.rows(sorted(changed)))


def own(event: ev.AnyRunEvent) -> ev.AnyRunEvent:
    """The rules keep a submitted spec and change it on updates: give them a copy, so the
    recorded event keeps what was submitted."""
    if isinstance(event, ev.RunSubmitted):
        own: ev.RunSubmitted = msgspec.structs.replace(
            event, spec=msgspec.structs.replace(event.spec)
        )
        return own
    return event
