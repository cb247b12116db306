"""The subscriptions ``getRunLogsV2`` and ``watchRunStatus`` (``reference/mapi.md`` sections 5.9
and 5.10), served over the WebSocket by ``services.api.websocket``.

Each subscribe resolver checks all it can before the first message (the input, the run, who
asks) and raises an ``ApiError`` for the subscription's one error; then it returns the stream.

- **The run** is found by name (or run id) and folded from its own history with the lifecycle
  fold (``events.lifecycle``), so a run submitted a moment ago is there. Another user's run is
  "not found" (``events.access.visible``), word for word as a run that does not exist.
- **watchRunStatus**: the run's status at once, then one message per change in the order the
  run's own stream has them (blocking reads of that stream, ``api_follow_block_ms`` each, no
  polling), ending after a terminal status (COMPLETED, STOPPED or FAILED: a retry that follows
  is a new attempt, for a new watch).
- **getRunLogsV2**: the attempt and the rank are chosen as ``mcli logs`` chooses them
  (``services.output.selection``; without ``failed``, rank 0); the stream is that rank's output
  as bytes (``services.output.chunks``), from ``offset``, or from the start of the last ``tail``
  lines when ``offset`` is 0, in base64 chunks of at most ``api_log_chunk_bytes`` raw bytes.
  ``follow: false`` ends at the output's current end; ``follow: true`` ends once the attempt is
  terminal and the log-collector has stored every line written before that
  (``reading.follow_records``). ``exceptionOnly`` is the first Python traceback alone, read
  once; its offsets count within it. Output is kept per node rank and for one container, so a
  GPU rank or a ``containerName`` other than MAIN is refused.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ariadne import ScalarType, SchemaBindable, SubscriptionType
from graphql import GraphQLResolveInfo, IntValueNode, ValueNode

from events.access import Principal, RunNotFound, visible
from events.lifecycle import RunState, evolve
from events.model import RunEvent, run_aggregate
from events.status import RunStatus
from services.api.errors import BadRequest, NotFound
from services.api.runs import RunRequests
from services.api.settings import ApiSettings
from services.core.store import EventStore
from services.output import chunks, formats, reading, selection

Json = dict[str, Any]
MAIN_CONTAINER = "MAIN"


@dataclass(frozen=True)
class SubscriptionContext:
    """What a subscription is given: who asks, the event store, the settings."""

    principal: Principal
    store: EventStore
    settings: ApiSettings


def _context(info: GraphQLResolveInfo[SubscriptionContext]) -> SubscriptionContext:
    context = info.context
    assert isinstance(context, SubscriptionContext)
    return context


class _Run:
    """One run folded from its own history, brought up to date on demand."""

    def __init__(self, store: EventStore, state: RunState, position: str) -> None:
        self.store = store
        self.state = state
        self.position = position

    @classmethod
    async def find(cls, context: SubscriptionContext, name: str) -> _Run:
        """The run named ``name`` (or with that id), if the caller may see it."""
        run_id = await RunRequests(context.store).resolve(name)
        records = await context.store.history(run_aggregate(run_id)) if run_id is not None else []
        state: RunState | None = None
        for record in records:
            assert isinstance(record.event, RunEvent)
            state = evolve(state, record.event)
        if state is None or not visible(context.principal, state.created_by, state.run_id):
            raise NotFound(str(RunNotFound(name)))
        return cls(context.store, state, records[-1].position)

    async def catch_up(self, block_ms: int | None = None) -> list[RunStatus]:
        """Fold the events appended since, waiting up to ``block_ms`` for one; the statuses
        after each, in order."""
        records = await self.store.wait_history(
            run_aggregate(self.state.run_id), self.position, block_ms
        )
        statuses: list[RunStatus] = []
        for record in records:
            assert isinstance(record.event, RunEvent)
            self.state = evolve(self.state, record.event)
            self.position = record.position
            statuses.append(self.state.status)
        return statuses


# --- watchRunStatus ---------------------------------------------------------------------------


async def watch_run_status(
    _: object, info: GraphQLResolveInfo[SubscriptionContext], **args: Any
) -> AsyncIterator[str]:
    context = _context(info)
    run = await _Run.find(context, args["watchRunStatusInput"]["name"])
    return _statuses(run, context.settings.api_follow_block_ms)


async def _statuses(run: _Run, block_ms: int) -> AsyncIterator[str]:
    status = run.state.status
    yield status.value
    while not status.is_terminal():
        for changed in await run.catch_up(block_ms):
            if changed is not status and not status.is_terminal():
                status = changed
                yield status.value


# --- getRunLogsV2 -----------------------------------------------------------------------------


def _non_negative(data: Json, field: str) -> int | None:
    value = data.get(field)
    if value is not None and value < 0:
        raise BadRequest(f"{field} must not be negative (got {value})")
    return value


async def get_run_logs(
    _: object, info: GraphQLResolveInfo[SubscriptionContext], **args: Any
) -> AsyncIterator[Json]:
    context = _context(info)
    data: Json = args["getRunLogsInput"]
    for gpu in ("localGpuRank", "globalGpuRank"):
        if data.get(gpu) is not None:
            raise BadRequest(f"{gpu}: output is kept per node rank, not per GPU: use nodeRank")
    if data.get("containerName") not in (None, MAIN_CONTAINER):
        raise BadRequest(f"containerName: only {MAIN_CONTAINER} has output here")
    offset = _non_negative(data, "offset") or 0
    tail = _non_negative(data, "tail")
    rank = _non_negative(data, "nodeRank")
    run = await _Run.find(context, data["name"])
    state = run.state
    try:
        attempt = selection.attempt_index(
            state.name, state.latest.index, _non_negative(data, "attemptIndex")
        )
        placed = state.attempts[attempt].ranks
        reason = state.attempts[attempt].reason
        chosen = await selection.node_rank(
            context.store.redis,
            state.name,
            state.run_id,
            attempt,
            len(placed) or None,
            rank=rank,
            failed=bool(data.get("failed")),
            folded_failure=reason.failed_rank if reason is not None else None,
        )
    except selection.NoSuchOutput as error:
        raise BadRequest(str(error)) from None

    async def finished() -> bool:
        await run.catch_up()
        return run.state.attempts[attempt].status.is_terminal()

    stream = _RankStream(context, state.run_id, attempt, chosen or 0)
    if data.get("exceptionOnly"):
        return stream.exception(offset)
    return stream.output(
        offset=offset,
        tail=tail if offset == 0 else None,
        follow=finished if data.get("follow") else None,
    )


@dataclass(frozen=True)
class _RankStream:
    context: SubscriptionContext
    run_id: str
    attempt: int
    rank: int

    async def _records(self) -> list[formats.Record]:
        return await reading.read_records(
            self.context.store.redis,
            self.context.settings.archive_dir,
            self.run_id,
            self.attempt,
            self.rank,
        )

    async def exception(self, offset: int) -> AsyncIterator[Json]:
        lines = chunks.first_exception([r.shown() for r in await self._records()])
        chunker = chunks.Chunker(self.context.settings.api_log_chunk_bytes, offset)
        for chunk in _flushed(chunker, lines):
            yield _message(chunk)

    async def output(
        self, *, offset: int, tail: int | None, follow: Callable[[], Awaitable[bool]] | None
    ) -> AsyncIterator[Json]:
        records = await self._records()
        lines = [r.shown() for r in records]
        start = chunks.tail_start(lines, tail) if tail is not None else offset
        chunker = chunks.Chunker(self.context.settings.api_log_chunk_bytes, start)
        for chunk in _flushed(chunker, lines):
            yield _message(chunk)
        if follow is None:
            return
        async for batch in reading.follow_records(
            self.context.store.redis,
            self.context.settings.archive_dir,
            self.run_id,
            self.attempt,
            self.rank,
            is_finished=follow,
            after=records[-1].id if records else None,
            block_ms=self.context.settings.api_follow_block_ms,
        ):
            for chunk in _flushed(chunker, [r.shown() for r in batch]):
                yield _message(chunk)


def _flushed(chunker: chunks.Chunker, lines: list[bytes]) -> list[chunks.Chunk]:
    """The chunks of ``lines``, the last one cut short rather than kept waiting."""
    found = chunker.feed(lines)
    last = chunker.flush()
    return [*found, last] if last is not None else found


def _message(chunk: chunks.Chunk) -> Json:
    return {"chunk": base64.b64encode(chunk.data).decode(), "endOffset": chunk.end}


def _event(event: Any, *_: Any, **__: Any) -> Any:
    return event


#: field -> (subscribe resolver, resolver of each event)
SUBSCRIPTIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "getRunLogsV2": (get_run_logs, _event),
    "watchRunStatus": (watch_run_status, _event),
}


def _offset(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a byte offset is an integer of 0 or more, not {value!r}")
    return value


def _offset_literal(node: ValueNode, _: Any = None) -> int:
    if not isinstance(node, IntValueNode):
        raise TypeError("a byte offset is an integer of 0 or more")
    return _offset(int(node.value))


def bindables() -> list[SchemaBindable]:
    """The schema's Subscription type bound to ``SUBSCRIPTIONS``, and its ``ByteOffset``."""
    subscription = SubscriptionType()
    for field, (source, resolver) in SUBSCRIPTIONS.items():
        subscription.set_source(field, source)
        subscription.set_field(field, resolver)
    offset = ScalarType(
        "ByteOffset", serializer=_offset, value_parser=_offset, literal_parser=_offset_literal
    )
    return [subscription, offset]
