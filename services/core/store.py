"""The event store client: the only code that writes the log (its reads:
``services.core.reading``, which ``EventStore`` extends).

Invariants:
- Every append goes through the server-side function in ``append.lua``: one aggregate's events
  land in its own stream and the partition's global stream together or not at all, stamped
  with the server's clock, after the expected-version check and the idempotency check.
- An append always carries an idempotency key (the first event's id unless given), so retrying
  after a dropped connection stores the events once and returns the original positions.
- ``append_all`` sends several aggregates' appends in one round trip (a pipeline): each is
  still its own call of the function, with its own expected version, fence and idempotency
  key, so each lands or fails alone, exactly as ``append`` would; what the server answers
  comes after it stored them all (with ``appendfsync always``, after its fsync), and a retry
  resends them all (those that had landed come back as duplicates).
- Events are checked against the lifecycle rules before they are sent (``update_run``); a lost
  race re-reads and re-decides.
- A run's stream retired to the archive (``services.core.reading``) is restored from the
  segments the archive's index names before an append to it. The server keeps no record of
  it, only a count of its bucket's retirements: an append of any event but a run's first to an
  aggregate with no stream looks in the index first, and a retirement meanwhile sends it to
  look again.
- ``runplane_events_appended_total{type}`` counts the events this process stored, by tag: a
  retried append that had landed already (a duplicate) is not counted again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from importlib.resources import files
from typing import Any, NamedTuple, Self, TypeVar, cast

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from events import codec, inbox, keys
from events.lifecycle import RunState, copy_state, evolve
from events.model import (
    AnyRunEvent,
    Event,
    begins_history,
    run_aggregate,
    tag_of,
)
from services.core import acl
from services.core.client import (
    NotReplicated,
    check_replicated,
    connect_with,
    replicas_of,
    replicate,
    wait_after,
)
from services.core.errors import Fenced, MixedAggregates, StoreUnavailable, VersionConflict
from services.core.metrics import REGISTRY
from services.core.reading import EventReader
from services.core.retired import Retired
from services.core.settings import Settings

log = structlog.get_logger(__name__)

_FUNCTION = files("services.core").joinpath("append.lua").read_text()
#: The append function's name in ``append.lua``; a new layout of its keys or arguments gets a
#: new name, so a server still holding the old one answers "not found" and is given the new.
APPEND_FUNCTION = "runplane_append4"
#: The scheduler's fenced read of its consumer group (``read_fenced``).
READ_FUNCTION = "runplane_read"
#: A retired history's stream put back from the archive (``_restore``).
RESTORE_FUNCTION = "runplane_restore2"


class _NotLoaded(Exception):
    """The append function is not on the server, and this user may not load it (the
    scheduler does, at its start: ``services.core.acl``): wait for it as for a server away."""


#: What a retry (with the append's idempotency key) may cure: a server or connection away, a
#: cluster failing over (CLUSTERDOWN, TRYAGAIN, a slot not covered yet), a replica behind.
_TRANSIENT = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    _NotLoaded,
    NotReplicated,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)
#: How many times an append restores its aggregate's archived stream before it gives up (the
#: archiver may retire it again in between, once).
_RESTORES = 3
#: The replies of the append function for an aggregate with no stream whose history may be
#: in the archive: a former version's record of it, or a bucket of retirements to look past.
_UNRETIRE = (b"retired", b"absent")
#: Where in the append function's arguments the bucket's count the writer looked past goes.
_CHECKED = 7

_Keys = tuple[str, ...]
_R = TypeVar("_R")
_Args = list[bytes | int | str]
Decide = Callable[[RunState | None], Sequence[AnyRunEvent]]


class Fence(NamedTuple):
    """Appends succeed only while ``key`` holds ``token`` (the scheduler's lease)."""

    key: str
    token: str


APPENDED = Counter(
    "runplane_events_appended",
    "Events this process appended to the log, by type (their tag: attempt.scheduled, ...).",
    ["type"],
    registry=REGISTRY,
)


class Appended(NamedTuple):
    positions: list[str]
    version: int | None  # the aggregate's new version; None for a duplicate
    duplicate: bool


class Append(NamedTuple):
    """One aggregate's append, as ``EventStore.append`` takes it, for ``append_all``."""

    events: Sequence[Event]
    expected_version: int | None
    fence: Fence | None = None
    idempotency_key: str | None = None


#: What one append of ``append_all`` came to: stored, or refused (nothing of it written).
Outcome = Appended | VersionConflict | Fenced


class _Request(NamedTuple):
    """One call of the append function, and what its reply is read against."""

    keys: _Keys
    args: _Args
    aggregate: str
    expected_version: int | None
    events: Sequence[Event]


class EventStore(EventReader):
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        replicate(client, settings.append_replicas, settings.append_replica_timeout_ms)
        super().__init__(client, settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(connect_with(settings), settings)

    # --- writing ----------------------------------------------------------------------

    async def append(
        self,
        events: Sequence[Event],
        *,
        expected_version: int | None,
        idempotency_key: str | None = None,
        fence: Fence | None = None,
        retry_for_s: float = 30.0,
    ) -> Appended:
        """Append one aggregate's events atomically.

        ``expected_version`` is the number of events the aggregate held when the writer read
        it (None: append whatever it holds). Raises ``VersionConflict`` if it moved,
        ``Fenced`` if ``fence`` is given and its key no longer holds its token, and
        ``StoreUnavailable`` if the server stays unreachable for ``retry_for_s`` seconds.
        """
        request = self._request(Append(events, expected_version, fence, idempotency_key))
        reply = await self._call(partial(self._fcall, request.keys, request.args), retry_for_s)
        [reply] = await self._restoring([request], [reply], retry_for_s)
        outcome = _outcome(request, reply)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def append_all(
        self, appends: Sequence[Append], *, retry_for_s: float = 30.0
    ) -> list[Outcome]:
        """Several appends in one round trip, each what ``append`` would make of it: the
        outcomes in the order of ``appends``, a conflict or a fence as its error (the others
        landed all the same). Raises ``StoreUnavailable`` as ``append`` does."""
        requests = [self._request(one) for one in appends]
        if not requests:
            return []
        replies = await self._call(partial(self._fcall_all, requests), retry_for_s)
        replies = await self._restoring(requests, replies, retry_for_s)
        return [_outcome(request, reply) for request, reply in zip(requests, replies, strict=True)]

    async def _restoring(
        self, requests: Sequence[_Request], replies: list[list[bytes]], retry_for_s: float
    ) -> list[list[bytes]]:
        """``replies`` with each that found no stream for a history that may have been retired
        (``retired``, ``absent``: ``append.lua``) replaced by the reply to its request sent
        again once its stream is restored, or once the archive was found not to hold it
        (``_unretire``); ``_RESTORES`` times at most."""
        for _ in range(_RESTORES):
            waiting = [n for n, reply in enumerate(replies) if reply[0] in _UNRETIRE]
            if not waiting:
                break
            again = [await self._unretire(requests[n], replies[n], retry_for_s) for n in waiting]
            answered = await self._call(partial(self._fcall_all, again), retry_for_s)
            for n, reply in zip(waiting, answered, strict=True):
                replies[n] = reply
        return replies

    async def _unretire(
        self, request: _Request, reply: list[bytes], retry_for_s: float
    ) -> _Request:
        """What to send again for ``request``, whose aggregate has no stream: its history put
        back from the archive where the archive holds it (``_restore``), else the request
        itself, saying it looked at the bucket's count ``reply`` gave."""
        if reply[0] == b"retired":  # a former version's field: the history's place
            former, count = reply[1], reply[2]
            await self._restore(
                request.aggregate, Retired.decode(former), former, count, retry_for_s
            )
            return request
        count = reply[1]
        partition = keys.partition_of(request.aggregate, self.settings.partitions)
        kept = await self._log(partition).retired(request.aggregate)
        if kept is None:
            return request._replace(
                args=[*request.args[:_CHECKED], count, *request.args[_CHECKED + 1 :]]
            )
        await self._restore(request.aggregate, kept, b"", count, retry_for_s)
        return request

    async def _restore(
        self, aggregate: str, kept: Retired, former: bytes, count: bytes, retry_for_s: float
    ) -> None:
        """Put back the stream of a history that went to the archive (``runplane_restore2``),
        entry for entry from its segments (``kept``), so that it takes events again; nothing if
        another writer restored it first, or the history was retired again since ``former``
        and ``count`` were read. Raises ``ArchiveMissing`` where the archive cannot be read."""
        partition = keys.partition_of(aggregate, self.settings.partitions)
        entries = await self._log(partition).history(aggregate, kept)
        stream = keys.aggregate_stream(aggregate, partition)
        args: _Args = [former, keys.retirement_bucket(stream), count]
        for position, flat in entries:
            args += [position, len(flat), *flat]
        restored = await self._call(
            partial(self.redis.fcall, RESTORE_FUNCTION, 2, stream, keys.retired(partition), *args),
            retry_for_s,
        )
        log.info("append.restored", aggregate=aggregate, events=len(entries), done=restored)

    def _request(self, append: Append) -> _Request:
        events, fence = append.events, append.fence
        if not events:
            raise ValueError("nothing to append")
        aggregate = events[0].aggregate
        if any(event.aggregate != aggregate for event in events):
            raise MixedAggregates(
                f"one append holds one aggregate's events, not {aggregate}'s and others'"
            )
        partition = keys.partition_of(aggregate, self.settings.partitions)
        stream = keys.aggregate_stream(aggregate, partition)
        # The fencing key only with a fence: a key named in FCALL needs the caller's read and
        # write permission, and no writer but the scheduler may touch its lease.
        fcall_keys = (
            keys.log_stream(partition),
            stream,
            keys.idempotency_key(append.idempotency_key or events[0].id, partition),
            keys.told_nodes(aggregate, partition),
            keys.retired(partition),
            *((fence.key,) if fence else ()),
        )
        expected = append.expected_version
        args: _Args = [
            -1 if expected is None else expected,
            self.settings.idempotency_ttl_s * 1000,
            fence.token if fence else "",
            keys.inbox_prefix(partition),
            self.settings.inbox_max_len,
            "1" if begins_history(events[0]) else "0",
            keys.retirement_bucket(stream),
            "",  # the bucket's count looked past (``_unretire``)
        ]
        for event in events:
            fields = codec.encode(event)
            args += (fields[codec.KIND], fields[codec.BODY], inbox.route(event))
        return _Request(fcall_keys, args, aggregate, expected, events)

    async def update_run(
        self,
        run_id: str,
        decide: Decide,
        *,
        idempotency_key: str | None = None,
        fence: Fence | None = None,
        tries: int = 20,
        known: RunState | None = None,
    ) -> tuple[RunState | None, Appended | None]:
        """Read the run, decide what happens, check it against the rules, append it.

        A lost race re-reads and re-decides, up to ``tries`` times. ``decide`` may raise a
        domain error (nothing is written) or return no events (nothing to do). Returns the
        state after the append and what was appended.

        ``known``: the run as the caller folded it from the log itself (a node-agent, from its
        inbox), decided on first instead of a read. It may lag the log: the append's version
        check then refuses it, and so does any other outcome on it (no events, a refusal)
        stand only once decided again on the run as read.
        """
        for attempt in range(tries):
            guess = attempt == 0 and known is not None
            state = known if guess else await self.load_run(run_id)
            try:
                events = decide(state)
                if not events:
                    if guess:
                        continue
                    return state, None
                after = copy_state(state) if state is not None else None
                for event in events:
                    after = evolve(after, event)
            except Exception:
                if guess:
                    continue  # decided on what may be stale: the run as read says
                raise
            try:
                appended = await self.append(
                    events,
                    expected_version=state.version if state is not None else 0,
                    idempotency_key=idempotency_key,
                    fence=fence,
                )
            except VersionConflict:
                continue
            return after, appended
        raise VersionConflict(run_aggregate(run_id), -1, -1)

    async def _call(self, send: Callable[[], Awaitable[_R]], retry_for_s: float) -> _R:
        """``send()``, retried with back-off while the server is away (the idempotency keys
        make that safe), for ``retry_for_s`` seconds at most."""
        try:
            return await send()
        except _TRANSIENT:
            pass  # retried below, with back-off; the idempotency key makes that safe
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_delay(retry_for_s),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await send()
        except _TRANSIENT as exc:
            raise StoreUnavailable(self.settings.redis_url, str(exc) or type(exc).__name__) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fcall(self, fcall_keys: _Keys, args: _Args) -> list[bytes]:
        await self._check_partitions()
        try:
            return await self._send(fcall_keys, args)
        except ResponseError as exc:
            if not _not_found(exc):
                raise
            await self._load_missing(str(exc))
            return await self._send(fcall_keys, args)

    async def _fcall_all(self, requests: Sequence[_Request]) -> list[list[bytes]]:
        await self._check_partitions()
        replies = await self._send_all(requests)
        if missing := next((reply for reply in replies if _not_found(reply)), None):
            await self._load_missing(str(missing))
            replies = await self._send_all(requests)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return cast(list[list[bytes]], replies)

    async def _load_missing(self, why: str) -> None:
        """A server that never saw runplane (or lost its data): load the function, if this
        user may (else wait for the scheduler to, as for a server away)."""
        if not acl.loads_append_function(self.settings.redis_username):
            raise _NotLoaded(why) from None
        await self.load_function()

    async def _send(self, fcall_keys: _Keys, args: _Args) -> list[bytes]:
        """One call of the append function. With ``append_replicas``, answered only once that
        many replicas hold what it wrote (``client.wait_after``: WAIT on the same connection,
        right after it). A duplicate writes too (it renews its idempotency key), so WAIT then
        covers the first call's events as well: a retry after a lost WAIT is acknowledged only
        once they are replicated."""
        if not replicas_of(self.redis):
            reply = await self.redis.fcall(APPEND_FUNCTION, len(fcall_keys), *fcall_keys, *args)
            return list(reply)
        pipe = self.redis.pipeline(transaction=False)
        pipe.fcall(APPEND_FUNCTION, len(fcall_keys), *fcall_keys, *args)
        waits = await wait_after(pipe, self.redis, fcall_keys[:1])
        reply, *waited = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        if reply[0] in (b"ok", b"dup"):  # a conflict or a fence wrote nothing to wait for
            check_replicated(self.redis, waited[:waits])
        return list(reply)

    async def _send_all(self, requests: Sequence[_Request]) -> list[Any]:
        """One pipeline of calls (``_send`` for each, the WAITs once after them all); the
        replies, a failed call's as its error."""
        pipe = self.redis.pipeline(transaction=False)
        for request in requests:
            pipe.fcall(APPEND_FUNCTION, len(request.keys), *request.keys, *request.args)
        waits = await wait_after(pipe, self.redis, {request.keys[0] for request in requests})
        answered = await pipe.execute(raise_on_error=False)
        replies, waited = answered[: len(requests)], answered[len(requests) :]
        if any(not isinstance(r, Exception) and r[0] in (b"ok", b"dup") for r in replies):
            check_replicated(self.redis, waited[:waits])
        return replies

    async def load_function(self) -> None:
        await self.redis.function_load(_FUNCTION, replace=True)

    async def read_fenced(
        self, stream: str, group: str, consumer: str, count: int, fence: Fence
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The next entries of ``stream`` the consumer group ``group`` has not given anyone,
        ``count`` at most, taken only while ``fence`` holds (``runplane_read``); ``Fenced``
        otherwise. Read with ``NOACK``: nothing stays pending."""
        reply: Any = await self.redis.fcall(
            READ_FUNCTION, 2, fence.key, stream, fence.token, group, consumer, count
        )
        if not reply:
            return []
        if reply[0] == b"fenced":
            raise Fenced(stream, reply[1].decode())
        [[_, entries]] = reply
        return [(position, codec.fields_of(flat)) for position, flat in entries]

    async def tell(self, aggregate: str, node: str) -> None:
        """Add ``node`` to the nodes told of ``aggregate``'s events (``events.inbox``) until its
        next placement or attempt's end."""
        partition = keys.partition_of(aggregate, self.settings.partitions)
        await self.redis.sadd(keys.told_nodes(aggregate, partition), node)


def _not_found(reply: object) -> bool:
    return isinstance(reply, ResponseError) and "Function not found" in str(reply)


def _outcome(request: _Request, reply: list[bytes]) -> Outcome:
    """What the append function's ``reply`` to ``request`` says (counted once if stored)."""
    status = reply[0]
    if status in _UNRETIRE:  # restored _RESTORES times, and archived again each time
        return VersionConflict(request.aggregate, request.expected_version or 0, -1)
    if status == b"conflict":
        return VersionConflict(request.aggregate, request.expected_version or 0, int(reply[1]))
    if status == b"fenced":
        return Fenced(request.aggregate, reply[1].decode())
    positions = reply[1].decode().split(" ")
    if status == b"dup":
        log.info("append.duplicate", aggregate=request.aggregate, positions=positions)
        return Appended(positions, None, duplicate=True)
    for event in request.events:
        APPENDED.labels(tag_of(type(event))).inc()
    return Appended(positions, int(reply[2]), duplicate=False)
