"""Drives a running stack the way a user does: submit, stop, restart, delete, through the log;
and reads what happened from the log, and what the runs printed.

``stack_up`` and ``driving`` are the stack and driver fixtures' bodies, for every suite that
runs the whole stack (``tests/e2e``, ``tests/gpu``) with its own configuration.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from cli.stack import LocalStack, StackConfig
from events import commands, keys
from events.codec import Recorded
from events.lifecycle import RunState
from events.model import AttemptScheduled, NodeRegistered
from events.spec import Compute, RunSpec, Scheduling
from events.status import RunStatus
from services.core.store import EventStore
from services.output import reading
from tests.e2e.denials import denials
from tests.waiting import eventually

USER = "alice@example.com"
ENDED = tuple(status for status in RunStatus if status.is_terminal())


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


#: The log's servers a stack may run on; a module runs on a shape other than one server with
#: ``pytest.mark.parametrize("stack", [...], indirect=True)``.
#: Each is (shards, replicas) of ``StackConfig`` and the log's partitions: on the cluster,
#: four, whose slots fall on all three shards.
SHAPES: dict[str, tuple[int | None, int, int]] = {
    "one-server": (None, 0, 1),
    "cluster": (3, 1, 4),
}


@contextlib.contextmanager
def stack_up(state_dir: Path, config: StackConfig) -> Iterator[LocalStack]:
    """A local stack, always taken down after; the tail of each service's log is printed then
    (pytest shows it when the test failed)."""
    local = LocalStack(state_dir)
    local.up(config)
    try:
        yield local
        refused = denials(local)
        assert not refused, "the server refused a service (services/core/acl.py):\n" + "\n".join(
            refused
        )
    finally:
        local.down()
        _print_log_tails(local)


@contextlib.asynccontextmanager
async def driving(
    stack: LocalStack, nodes: int, *, stop_all: bool = False
) -> AsyncIterator[Driver]:
    """A driver of ``stack``, once its ``nodes`` node-agents have registered; ``stop_all``:
    every run it submitted is stopped at the end."""
    store = EventStore.from_settings(stack.operator_settings())
    try:
        drive = Driver(store, stack)
        await drive.wait_for_nodes(nodes)
        try:
            yield drive
        finally:
            if stop_all:
                await drive.stop_all()
    finally:
        await store.close()


def _print_log_tails(stack: LocalStack) -> None:
    for name in stack.services:
        path = stack.log_of(name)
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {name} ---", *tail, sep="\n")


class Driver:
    def __init__(self, store: EventStore, stack: LocalStack) -> None:
        self.store = store
        self.stack = stack
        self._last_seen = ["0"] * store.settings.partitions  # per partition
        self.submitted: list[str] = []

    async def submit(self, run_spec: RunSpec, user: str = USER) -> str:
        run_id = _new_id()
        command = commands.SubmitRun(
            actor=user, run_id=run_id, name=f"{run_spec.name}-{run_id[:6]}", spec=run_spec
        )
        await self.store.update_run(run_id, lambda state: commands.decide(state, command, _new_id))
        self.submitted.append(run_id)
        return run_id

    async def stop_all(self, within: float = 60) -> None:
        """Stop every run this driver submitted that is still going, and wait until each has
        ended: ranks outlive the stack's services (by design), so a test that fails while its
        run holds a GPU would leave the run's command behind, on the GPU."""
        for run_id in self.submitted:
            with contextlib.suppress(commands.RequestRefused):  # ended, or ending, already
                await self.request(run_id, commands.StopRun(actor=USER, reason="test teardown"))
        for run_id in self.submitted:
            await self.wait_for(run_id, *ENDED, within=within)

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
            return len({event.node for event in await self.registrations()})

        await eventually(registered, equals=count, what=f"{count} nodes registered")

    async def registrations(self) -> list[NodeRegistered]:
        """Every ``node.registered`` in the log, in order (an agent registers at each start)."""
        return [r.event async for r in self.replay() if isinstance(r.event, NodeRegistered)]

    async def replay(self) -> AsyncIterator[Recorded]:
        """Every event of the log: each partition's in its order, one partition after another."""
        for partition in range(self.store.settings.partitions):
            async for record in self.store.replay(partition):
                yield record

    async def output(self, run_id: str, attempt: int = 0, rank: int = 0) -> list[str]:
        """The lines the rank has printed so far (stdout and stderr), live or archived."""
        archive = self.stack.state_dir / "archive"
        lines = await reading.read_lines(self.store.redis, archive, run_id, attempt, rank)
        return [line.text for line in lines]

    async def settled(self, group: str) -> None:
        """Wait until consumer group ``group`` has taken and acknowledged the whole log, every
        partition's (a node-agent's, ``agent:<node>``: the whole of its inboxes, where the log's
        events for it are copied as they are appended)."""
        node = group.removeprefix("agent:") if group.startswith("agent:") else None

        async def caught_up(partition: int) -> bool:
            stream = keys.log_stream(partition) if node is None else keys.inbox(node, partition)
            if node is None:
                after = self._last_seen[partition]
                end = await self.store.read_log(partition, after=after, count=1_000_000)
                if end:
                    self._last_seen[partition] = end[-1].position
                newest = self._last_seen[partition]
            elif not await self.store.redis.exists(stream):
                return True  # nothing was ever told to this node from this partition
            else:
                newest = (await self.store.redis.xinfo_stream(stream))["last-generated-id"].decode()
            for info in await self.store.redis.xinfo_groups(stream) if newest != "0" else []:
                if info["name"].decode() == group:
                    delivered = info["last-delivered-id"].decode()
                    return bool(info["pending"] == 0 and delivered == newest)
            return newest == "0"  # an empty partition: nothing to catch up with

        async def every_partition() -> bool:
            return all([await caught_up(p) for p in range(self.store.settings.partitions)])

        await eventually(every_partition, what=f"group {group} to catch up with the log")

    async def placements(self) -> list[AttemptScheduled]:
        return [r.event async for r in self.replay() if isinstance(r.event, AttemptScheduled)]


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
