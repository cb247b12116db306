"""Experimental ways to replay the log, measured next to ``EventStore.replay``.

Every variant yields what ``replay`` yields: records made by the store's own per-entry
function (``services.core.reading._recorded``) or, in the fast path, built inline and checked
equal to those (``same_records``) before they are timed; only the reading around it differs.
Any speed-up shown here is a change ``services/core/reading.py`` (or ``events/``) could adopt;
nothing outside ``bench/`` uses this module.

- ``replay_prefetch``: the next ``XRANGE`` is sent before the current page is decoded, so
  the server builds page n+1 while Python decodes page n (it needs a free second core).
- ``raw_client``: ``XRANGE`` without redis-py's reply callback, which otherwise builds a tuple
  and a dict per entry (``parse_stream_list``) that live, GC-tracked, as long as the page.
- ``fast_path_decoder``: callback-free entries decoded inline (no dict, no helper calls),
  falling back to the store's function for anything unusual.
- ``Untracked``: the event union as ``gc=False`` subclasses (what ``gc=False`` on
  ``events.model.Event`` would do): decoded events are not tracked by the cyclic GC.
- ``frozen_heap``: ``gc.freeze()`` before the replay, so the collections a replay triggers do
  not traverse everything the process imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol, Union

import msgspec
import redis.asyncio as aioredis

import services.core.reading as reading_module
from events import codec
from events.model import ALL_EVENT_TYPES, AnyEvent, Event, tag_of

#: An XRANGE entry: ``(id, {field: value})`` with redis-py's callback, ``[id, [f, v, ...]]``
#: without it.
Entry = Any
Fetch = Callable[[str], Awaitable[list[Entry]]]
_SEND_TURNS = 4


class Record(Protocol):
    @property
    def event(self) -> Event: ...


#: The store's own entry -> record function (position bytes, fields dict).
to_record: Callable[[bytes, dict[bytes, bytes]], Record] = reading_module._recorded


def raw_client(client: aioredis.Redis) -> aioredis.Redis:
    """A client on the same pool whose ``XRANGE`` returns the parser's reply untouched."""
    raw = aioredis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XRANGE", _identity)
    return raw


def _identity(response: Any, **_: Any) -> Any:
    return response


def fetcher(client: aioredis.Redis, stream: str, page: int) -> Fetch:
    async def fetch(start: str) -> list[Entry]:
        entries: list[Entry] = await client.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", stream, start, "+", "COUNT", page
        )
        return entries

    return fetch


def _next_start(entries: list[Entry]) -> str:
    last: bytes = entries[-1][0]
    return f"({last.decode()}"


async def count_raw(fetch: Fetch, page: int) -> int:
    """Every page of the stream, nothing decoded: the baseline of every replay."""
    total = 0
    start = "-"
    while True:
        entries = await fetch(start)
        total += len(entries)
        if len(entries) < page:
            return total
        start = _next_start(entries)


# --- per-page decoders (lazy, entry by entry, like the store) --------------------------------


def decode_dict_entries(entries: list[Entry]) -> Iterator[Record]:
    for raw_position, fields in entries:
        yield to_record(raw_position, fields)


def decode_list_entries(entries: list[Entry]) -> Iterator[Record]:
    for raw_position, fields in entries:
        it = iter(fields)
        yield to_record(raw_position, dict(zip(it, it, strict=True)))


Decode = Callable[[list[Entry]], Iterator[Record]]


#: Each event class's current kind (``tag@version``), as ``events.codec`` checks it.
KIND_OF: dict[type, bytes] = {
    cls: f"{tag_of(cls)}@{cls.VERSION}".encode() for cls in ALL_EVENT_TYPES
}


def fast_path_decoder(untracked: Untracked | None = None) -> Decode | None:
    """Callback-free entries decoded inline: for the usual ``[k, kind, e, body, n, version]``
    entry of a current kind whose body is that kind, no dict, no helper calls, the record built
    directly; anything else (old version, other layout, a body that does not decode or is of
    another kind) goes to the store's own function, so results and errors are the store's.
    With ``untracked``, events are decoded as its ``gc=False`` classes. None if
    ``events.codec`` changed shape (no ``Recorded(position, version, event)``, ``VERSION``)."""
    recorded = getattr(codec, "Recorded", None)
    version_field = getattr(codec, "VERSION", None)
    if (
        recorded is None
        or getattr(recorded, "_fields", None) != ("position", "version", "event")
        or version_field is None
    ):
        return None
    layout = (codec.KIND, codec.BODY, version_field)
    decoder = untracked.decoder if untracked else msgspec.json.Decoder(AnyEvent)
    kind_of = untracked.kind_of if untracked else KIND_OF
    kinds = frozenset(KIND_OF.values())
    new = tuple.__new__

    def decode(entries: list[Entry]) -> Iterator[Record]:
        for raw_position, fields in entries:
            usual = len(fields) == 6 and (fields[0], fields[2], fields[4]) == layout
            if usual and fields[1] in kinds:
                try:
                    event = decoder.decode(fields[3])
                except msgspec.MsgspecError:
                    pass  # the store's path raises UndecodableEvent with the position
                else:
                    if kind_of[type(event)] == fields[1]:
                        position = raw_position.decode()
                        event.time = int(position[: position.index("-")])
                        yield new(recorded, (position, int(fields[5]), event))
                        continue
            it = iter(fields)
            yield to_record(raw_position, dict(zip(it, it, strict=True)))

    return decode


async def replay_sequential(fetch: Fetch, page: int, decode: Decode) -> AsyncIterator[Record]:
    """``EventStore._range`` with a pluggable fetch and decoder."""
    start = "-"
    while True:
        entries = await fetch(start)
        for record in decode(entries):
            yield record
        if len(entries) < page:
            return
        start = _next_start(entries)


async def replay_prefetch(fetch: Fetch, page: int, decode: Decode) -> AsyncIterator[Record]:
    """The request for page n+1 is on the wire while page n is decoded and consumed."""
    pending = asyncio.ensure_future(fetch("-"))
    try:
        while True:
            entries = await pending
            full = len(entries) == page
            if full:
                pending = asyncio.ensure_future(fetch(_next_start(entries)))
                # redis-py needs a few loop turns (pool, connection checks) before it has
                # written the command; one sleep(0) is not enough and hides nothing.
                for _ in range(_SEND_TURNS):
                    await asyncio.sleep(0)
            for record in decode(entries):
                yield record
            if not full:
                return
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending


async def consume(records: AsyncIterator[Record]) -> int:
    """What a projection does with the records, minus its own work: look at each one."""
    total = 0
    async for record in records:
        total += record.event.time > 0
    return total


# --- process-wide conditions, for one measurement ---------------------------------------------


def same_records(records: list[Record], expected: list[Record]) -> bool:
    """Equal records, events compared by tag and encoding (a ``gc=False`` subclass instance
    is the same event as its parent class's)."""

    def key(record: Record) -> tuple[object, ...]:
        event = record.event
        fields = tuple(record) if isinstance(record, tuple) else ()
        rest = tuple(f for f in fields if f is not event)
        return (rest, tag_of(type(event)), msgspec.json.encode(event))

    return len(records) == len(expected) and all(
        key(a) == key(b) for a, b in zip(records, expected, strict=True)
    )


class Untracked:
    """The event union as ``gc=False`` subclasses of the real classes (isinstance checks, fields,
    tags and encoding unchanged): what ``gc=False`` on ``events.model.Event`` would give."""

    def __init__(self) -> None:
        self.kind_of: dict[type, bytes] = {}
        for cls in ALL_EVENT_TYPES:
            sub = type(cls.__name__, (cls,), {}, gc=False, tag=tag_of(cls))
            self.kind_of[sub] = KIND_OF[cls]
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            Union[tuple(self.kind_of)]  # noqa: UP007
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The codec decodes with this union while inside (its ``_decoder`` swapped and, if it
        checks kinds by class, the subclasses known to its ``_KIND_OF``)."""
        saved = codec._decoder
        kind_of = getattr(codec, "_KIND_OF", None)
        codec._decoder = self.decoder
        if isinstance(kind_of, dict):
            kind_of.update(self.kind_of)
        try:
            yield
        finally:
            codec._decoder = saved
            if isinstance(kind_of, dict):
                for sub in self.kind_of:
                    kind_of.pop(sub, None)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextlib.contextmanager
def store_page(page: int) -> Iterator[None]:
    """``EventStore`` with another XRANGE page size, in this process only (no file changes)."""
    saved = reading_module._PAGE
    reading_module._PAGE = page
    try:
        yield
    finally:
        reading_module._PAGE = saved


class GcAccount:
    """Time spent in the cyclic GC, and collections by generation, while it is installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcAccount:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)
