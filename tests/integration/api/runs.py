"""A run that executes, for the API's log and status tests: the events the scheduler and the
node-agents would append, through the real event store, and its output through the real ingest
path (``services.output.ingest``) to a real log-collector (``tests.integration.log_collector``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from events import keys
from events.model import (
    AttemptCompleted,
    AttemptFailed,
    AttemptQueued,
    AttemptRunning,
    AttemptScheduled,
    AttemptTerminating,
    RankExited,
    RankPlacement,
    RankRunning,
    Reason,
    RunEvent,
)
from projections.catalog import NAMES
from projections.rebuild import rebuild
from services.core.store import EventStore
from services.output import ingest, reading
from tests.factories import new_id
from tests.integration.api.seed import CLUSTER, now_ms, submit
from tests.waiting import eventually

SCHEDULER, AGENT = "scheduler@test", "node-agent@test"


@dataclass
class LiveRun:
    store: EventStore
    name: str
    run_id: str
    nodes: int

    @classmethod
    async def start(cls, store: EventStore, user: str, base: str, nodes: int = 1) -> LiveRun:
        """Submitted, placed and RUNNING on ``nodes`` ranks."""
        name = await submit(store, user, base)
        raw = await store.redis.get(keys.run_name(name))
        assert isinstance(raw, bytes)
        run = cls(store, name, raw.decode(), nodes)
        placements = [RankPlacement(rank=k, node=f"node-{k}", gpus=[0]) for k in range(nodes)]
        await run.append(
            AttemptQueued(id=new_id(), actor=SCHEDULER, run_id=run.run_id, reason="", position=1),
            AttemptScheduled(
                id=new_id(), actor=SCHEDULER, run_id=run.run_id, cluster=CLUSTER, ranks=placements
            ),
            *(
                RankRunning(id=new_id(), actor=AGENT, run_id=run.run_id, rank=k, node=f"node-{k}")
                for k in range(nodes)
            ),
            AttemptRunning(id=new_id(), actor=SCHEDULER, run_id=run.run_id),
        )
        return run

    async def append(self, *events: RunEvent) -> None:
        for event in events:
            await self.store.append([event], expected_version=None)

    async def write(self, rank: int, lines: Sequence[bytes]) -> None:
        """Output of ``rank``, through the ingest stream, as a rank's shim sends it."""
        await ingest.send(
            self.store.redis,
            [ingest.ingest_fields(self.run_id, 0, rank, ingest.STDOUT, line) for line in lines],
        )

    async def stored(self, rank: int, count: int) -> None:
        """Wait until the log-collector stored ``count`` lines of ``rank``."""

        async def lines() -> int:
            found = await reading.read_records(self.store.redis, None, self.run_id, 0, rank)
            return len(found)

        await eventually(lines, equals=count, what=f"{count} lines of rank {rank} stored")

    async def finish(self, failed_rank: int | None = None) -> None:
        """Every rank exits (``failed_rank`` with exit code 1) and the attempt ends."""
        reason = None
        if failed_rank is not None:
            reason = Reason(category="user", code="Error", exit_code=1, failed_rank=failed_rank)
        order = sorted(range(self.nodes), key=lambda k: k != failed_rank)
        for index, rank in enumerate(order):
            failing = rank == failed_rank
            await self.append(
                RankExited(
                    id=new_id(),
                    actor=AGENT,
                    run_id=self.run_id,
                    rank=rank,
                    node=f"node-{rank}",
                    exit_code=1 if failing else 0,
                )
            )
            if index == 0:
                await self.append(
                    AttemptTerminating(
                        id=new_id(), actor=SCHEDULER, run_id=self.run_id, reason=reason
                    )
                )
        ended: RunEvent = (
            AttemptCompleted(id=new_id(), actor=SCHEDULER, run_id=self.run_id)
            if reason is None
            else AttemptFailed(id=new_id(), actor=SCHEDULER, run_id=self.run_id, reason=reason)
        )
        await self.append(ended)

    async def project(self) -> None:
        """The projections rebuilt, as a running projector would have them."""
        await rebuild(self.store.redis, NAMES, now_ms=now_ms())
