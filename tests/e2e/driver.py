"""Drives a running stack the way a user does: submit, stop, restart, delete, through the log;
and reads what happened from the log."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable

from cli.stack import LocalStack
from events import commands, keys
from events.lifecycle import RunState
from events.model import AttemptScheduled, NodeRegistered
from events.spec import Compute, RunSpec, Scheduling
from events.status import RunStatus
from services.core.store import EventStore
from tests.waiting import eventually

USER = "alice@example.com"


def _new_id() -> str:
    return uuid.uuid4().hex


def spec(
    command: str,
    *,
    gpus: int = 1,
    nodes: int | None = None,
    name: str = "e2e",
    image: str = "mosaicml/pytorch:latest",
    **scheduling: object,
) -> RunSpec:
    return RunSpec(
        name=name,
        image=image,
        command=command,
        compute=Compute(cluster="local", gpus=gpus, nodes=nodes),
        scheduling=Scheduling(**scheduling),  # type: ignore[arg-type]
    )


class Driver:
    def __init__(self, store: EventStore, stack: LocalStack) -> None:
        self.store = store
        self.stack = stack
        self._last_seen = "0"

    async def submit(self, run_spec: RunSpec, user: str = USER) -> str:
        run_id = _new_id()
        command = commands.SubmitRun(
            actor=user, run_id=run_id, name=f"{run_spec.name}-{run_id[:6]}", spec=run_spec
        )
        await self.store.update_run(run_id, lambda state: commands.decide(state, command, _new_id))
        return run_id

    async def request(self, run_id: str, command: commands.Command) -> None:
        await self.store.update_run(run_id, lambda state: commands.decide(state, command, _new_id))

    async def run(self, run_id: str) -> RunState:
        state = await self.store.load_run(run_id)
        assert state is not None
        return state

    async def wait_for(
        self, run_id: str, *statuses: RunStatus, attempt: int | None = None, within: float = 60
    ) -> RunState:
        async def reached() -> RunState | None:
            state = await self.run(run_id)
            latest = state.latest
            ok = latest.status in statuses and (attempt is None or latest.index == attempt)
            return state if ok else None

        what = f"run {run_id[:6]} to reach {'/'.join(s.value for s in statuses)}"
        result: RunState = await eventually(reached, what=what, within=within)
        return result

    async def wait_for_nodes(self, count: int) -> None:
        async def registered() -> int:
            return len(
                {
                    r.event.node
                    async for r in self.store.replay()
                    if isinstance(r.event, NodeRegistered)
                }
            )

        await eventually(registered, equals=count, what=f"{count} nodes registered")

    async def settled(self, group: str) -> None:
        """Wait until consumer group ``group`` has taken and acknowledged the whole log."""
        stream = keys.log_stream(0)

        async def caught_up() -> bool:
            end = await self.store.read_log(after=self._last_seen, count=1_000_000)
            if end:
                self._last_seen = end[-1].position
            for info in await self.store.redis.xinfo_groups(stream):
                if info["name"].decode() == group:
                    delivered = info["last-delivered-id"].decode()
                    return bool(info["pending"] == 0 and delivered == self._last_seen)
            return False

        await eventually(caught_up, what=f"group {group} to catch up with the log")

    async def placements(self) -> list[AttemptScheduled]:
        return [r.event async for r in self.store.replay() if isinstance(r.event, AttemptScheduled)]


def gpu_overlaps(
    placements: Iterable[AttemptScheduled], spans: dict[str, tuple[int, int]]
) -> list[str]:
    """Pairs of attempts that held the same GPU at overlapping times (spans: attempt key ->
    (entered STARTING, left TERMINATING) in log ms)."""
    held: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for placement in placements:
        key = f"{placement.run_id}/{placement.attempt}"
        start, end = spans[key]
        for rank in placement.ranks:
            for gpu in rank.gpus:
                held.setdefault((rank.node, gpu), []).append((start, end, key))
    clashes = []
    for (node, gpu), uses in held.items():
        uses.sort()
        for (_, end_a, key_a), (start_b, _, key_b) in itertools.pairwise(uses):
            if start_b < end_a:
                clashes.append(f"{node}:{gpu} held by {key_a} and {key_b}")
    return clashes
