"""Encoding events into log entries and back, with the upcaster chain.

A log entry has the fields ``k`` (``tag@version``) and ``e`` (the event as JSON, its tag
included), written by the store, and ``n`` (the aggregate's version after the event), written
by the log itself. Invariants:
- ``decode(encode(e))`` equals ``e`` once the log's time is stamped.
- An entry of an older version is upcast, step by step, to the current one; a recorded sample
  of every old shape lives under ``tests/golden/`` and must still decode.
- Anything else (unknown tag, future version, broken JSON, missing field) raises
  ``UndecodableEvent`` naming the position and the reason; nothing is guessed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import msgspec

from events.errors import UndecodableEvent
from events.model import ALL_EVENT_TYPES, AnyEvent, Event, tag_of

KIND = b"k"
BODY = b"e"
VERSION = b"n"  # written by the log: the aggregate's version once this event is applied

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)
_CURRENT: dict[str, int] = {tag_of(cls): cls.VERSION for cls in ALL_EVENT_TYPES}
_KIND_OF: dict[type[Event], bytes] = {
    cls: f"{tag_of(cls)}@{cls.VERSION}".encode() for cls in ALL_EVENT_TYPES
}
_CURRENT_KINDS: frozenset[bytes] = frozenset(_KIND_OF.values())
_TYPE_OF: dict[bytes, type[Event]] = {kind: cls for cls, kind in _KIND_OF.items()}


def _scheduled_v1_to_v2(old: dict[str, Any]) -> dict[str, Any]:
    """v1 kept the placement as ``{node: [gpu, ...]}`` in rank order; v2 lists the ranks."""
    placement: dict[str, list[int]] = old.pop("placement")
    old["ranks"] = [
        {"rank": rank, "node": node, "gpus": gpus}
        for rank, (node, gpus) in enumerate(placement.items())
    ]
    return old


#: (tag, version) -> the function that turns that version into version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("attempt.scheduled", 1): _scheduled_v1_to_v2,
}


class Recorded(NamedTuple):
    """An event as the log holds it: where, the aggregate's version after it, and the event."""

    position: str
    version: int
    event: AnyEvent


class Order(enum.Enum):
    """Where a recorded event stands for a fold that has applied its aggregate up to a version.

    Every fold of the log (the scheduler's, each node-agent's) applies an aggregate's events
    once each, in order, by the version the log stamped: ``order`` is that rule."""

    SEEN = "seen"  # folded already: a redelivery, or read with the aggregate's history
    NEXT = "next"  # the next event of the aggregate: apply it
    GAP = "gap"  # an earlier event is missing here: reload the aggregate's whole history


def order(version: int, known: int) -> Order:
    """Where an event of aggregate version ``version`` stands for a fold at ``known``."""
    if version <= known:
        return Order.SEEN
    return Order.NEXT if version == known + 1 else Order.GAP


def recorded(position: str, fields: Mapping[bytes, bytes]) -> Recorded:
    """``decode`` plus the position and aggregate version the log stamped on the entry."""
    return Recorded(position, int(fields.get(VERSION, 0)), decode(position, fields))


def recorded_flat(raw_position: bytes, flat: list[bytes]) -> Recorded:
    """``recorded`` for an entry as the server sends it (``[field, value, ...]``)."""
    return recorded_from(raw_position.decode(), flat)


def recorded_from(position: str, flat: list[bytes]) -> Recorded:
    """``recorded_flat`` with the position decoded already.

    The hot path of every replay: an entry of the layout the log writes (``k``, ``e``, ``n``)
    and of a current kind is decoded inline; anything else takes ``recorded``, so the results
    and the errors are the same.
    """
    if len(flat) == 6 and flat[0] == KIND and flat[2] == BODY and flat[4] == VERSION:
        kind = flat[1]
        if kind in _CURRENT_KINDS:
            try:
                event: AnyEvent = _decoder.decode(flat[3])
            except msgspec.DecodeError:
                pass  # ``recorded`` names the error
            else:
                if _KIND_OF[type(event)] == kind:
                    event.time = int(position[: position.index("-")])
                    return Recorded(position, int(flat[5]), event)
    return recorded(position, fields_of(flat))


def fields_of(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's fields from the server's flat ``[field, value, ...]``."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class _About(msgspec.Struct):
    run_id: str | None = None


_about = msgspec.json.Decoder(_About)


def run_of(fields: Mapping[bytes, bytes] | list[bytes]) -> tuple[str | None, bytes | None]:
    """The run an entry is about (None: none, or a body that cannot be read), read from its
    body without decoding the rest of it; and the entry's kind (its ``k``). ``fields``: a
    mapping, or the server's flat ``[field, value, ...]``."""
    kind: bytes | None
    body: bytes | None
    if type(fields) is list and len(fields) == 6 and fields[0] == KIND:  # the log's layout
        kind, body = fields[1], fields[3] if fields[2] == BODY else None
    else:
        mapping = fields_of(fields) if isinstance(fields, list) else fields
        kind, body = mapping.get(KIND), mapping.get(BODY)
    if body is None:
        return None, kind
    try:
        return _about.decode(body).run_id, kind
    except msgspec.DecodeError:
        return None, kind


def kind_of(event: Event) -> bytes:
    return _KIND_OF[type(event)]


def kinds_of(types: Collection[type]) -> frozenset[bytes]:
    """Every ``k`` an entry of one of ``types`` may hold: its current version's and each older
    one's (upcast when decoded), for a reader that picks entries by kind before decoding."""
    return frozenset(
        f"{tag_of(cls)}@{version}".encode()
        for cls in ALL_EVENT_TYPES
        if cls in types
        for version in range(1, cls.VERSION + 1)
    )


def current_type(kind: bytes) -> type[Event] | None:
    """The event type a ``k`` field of the current version names (None: any other value)."""
    return _TYPE_OF.get(kind)


def encode(event: Event) -> dict[bytes, bytes]:
    """The fields of the log entry for ``event``."""
    return {KIND: kind_of(event), BODY: _encoder.encode(event)}


def decode(position: str, fields: Mapping[bytes, bytes]) -> AnyEvent:
    """The event stored at ``position``, upcast to the current version, time stamped."""
    try:
        kind, body = fields[KIND], fields[BODY]
    except KeyError:
        raise UndecodableEvent(position, f"not an event entry (fields {sorted(fields)})") from None
    try:
        event = _current(kind, body) if kind in _CURRENT_KINDS else _upcast(kind, body)
    except msgspec.ValidationError as exc:
        raise UndecodableEvent(position, f"{kind.decode(errors='replace')}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise UndecodableEvent(position, f"broken JSON: {exc}") from None
    event.time = int(position.split("-", 1)[0])
    return event


def _current(kind: bytes, body: bytes) -> AnyEvent:
    event: AnyEvent = _decoder.decode(body)
    if _KIND_OF[type(event)] != kind:
        raise msgspec.ValidationError(f"the body is a {tag_of(type(event))} event")
    return event


def _upcast(kind: bytes, body: bytes) -> AnyEvent:
    tag, _, version_text = kind.decode(errors="replace").partition("@")
    current = _CURRENT.get(tag)
    if current is None:
        raise msgspec.ValidationError(f"unknown event type {tag!r}")
    if not (version_text.isascii() and version_text.isdigit()) or int(version_text) < 1:
        raise msgspec.ValidationError(f"bad version {version_text!r}")
    version = int(version_text)
    if version > current:
        raise msgspec.ValidationError(
            f"version {version} is newer than this runplane knows ({current}): upgrade runplane"
        )
    payload = msgspec.json.decode(body)
    if not isinstance(payload, dict):
        raise msgspec.ValidationError("the event body is not a JSON object")
    if payload.get("type") != tag:
        raise msgspec.ValidationError(f"the body is not a {tag} event")
    while version < current:
        try:
            payload = UPCASTERS[(tag, version)](payload)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise msgspec.ValidationError(f"cannot upcast {tag}@{version}: {exc!r}") from None
        version += 1
    event: AnyEvent = msgspec.convert(payload, AnyEvent)
    return event
