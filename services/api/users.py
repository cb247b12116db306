"""Who an API key belongs to: the users and keys folded from the log, kept up to date.

The directory follows the global log: on each request it reads the entries appended since the
last one it saw (one XRANGE per partition, usually empty) and folds the user events among them
(a user's events are all on the user's partition, in order, so the partitions may be read in any
order), so a key
issued or revoked a moment ago counts at once; there is no cache to go stale. Concurrent
requests share one catch-up (a lock). Only user events are decoded (by the kind each entry
names): run and node events, and any entry that cannot be decoded, are passed over, so one bad
entry never locks every user out.

A run's token (``events.tokens``) is checked against its run's own history, read at each
request, so a token stops working the moment its attempt ends.

The key itself never leaves ``authenticate`` (``events.identity``): it is not logged, and a
refusal says only "Invalid API key" to the client; why (missing, unknown, revoked, ...) and the
key id go to the server's log.
"""

from __future__ import annotations

import asyncio

import structlog

from events import codec, tokens
from events.access import Principal
from events.errors import IllegalTransition, UndecodableEvent
from events.identity import (
    Unauthenticated,
    UserState,
    Why,
    authenticate,
    copy_state,
    evolve,
    key_index,
)
from events.model import USER_EVENT_TYPES, AnyUserEvent, tag_of
from services.core.store import EventStore

_PAGE = 5000
log = structlog.get_logger("services.api")
_USER_KINDS = frozenset(tag_of(kind).encode() for kind in USER_EVENT_TYPES)


class Directory:
    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._after = ["0"] * store.settings.partitions  # per partition
        self._users: dict[str, UserState] = {}
        self._index: dict[str, UserState] = {}
        self._lock = asyncio.Lock()

    async def catch_up(self) -> None:
        """Fold the user events appended since the last catch-up."""
        async with self._lock:
            changed = False
            for partition in range(len(self._after)):
                while True:
                    after = self._after[partition]
                    entries = await self._store.read_log_entries(partition, after, _PAGE)
                    for raw_position, fields in entries:
                        if fields.get(codec.KIND, b"").partition(b"@")[0] in _USER_KINDS:
                            changed |= self._fold(raw_position.decode(), fields)
                    if entries:
                        self._after[partition] = entries[-1][0].decode()
                    if len(entries) < _PAGE:
                        break
            if changed:
                self._index = key_index(self._users.values())

    def _fold(self, position: str, fields: dict[bytes, bytes]) -> bool:
        try:
            event = codec.recorded(position, fields).event
        except UndecodableEvent as exc:
            log.warning("user_event_undecodable", position=position, error=str(exc))
            return False
        if not isinstance(event, AnyUserEvent):
            return False
        before = self._users.get(event.user)
        state = None if before is None else copy_state(before)
        try:
            self._users[event.user] = evolve(state, event)
        except IllegalTransition:  # refused at append: never in a log written through the store
            log.warning("user_event_refused", position=position)
            return False
        return True

    async def users(self) -> list[UserState]:
        """Every user, by name, as of now."""
        await self.catch_up()
        return [copy_state(self._users[name]) for name in sorted(self._users)]

    async def principal(self, presented: str | None, now_ms: int) -> Principal:
        """Who ``presented`` (an API key or a run's token) is; ``Unauthenticated`` if none."""
        if presented is not None and tokens.is_token(presented):
            token = tokens.parse_token(presented)
            if token is None:
                raise Unauthenticated(Why.MALFORMED)
            return tokens.run_principal(await self._store.load_run(token.run_id), token)
        await self.catch_up()
        return authenticate(self._index, presented, now_ms)


def presented_credential(header: str | None) -> str | None:
    """The key or token in an ``Authorization`` value: raw, or after ``Bearer``."""
    if header is None:
        return None
    scheme, _, rest = header.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else header.strip()
