"""Who an API key belongs to: the users and keys folded from the log, kept up to date.

The directory follows the global log: on each request it reads the entries appended since the
last one it saw (one XRANGE, usually empty) and folds the user events among them, so a key
issued or revoked a moment ago counts at once; there is no cache to go stale. Concurrent
requests share one catch-up (a lock). Run and node events are skipped.

The key itself never leaves ``authenticate`` (``events.identity``): it is not logged, and a
refusal says only "Invalid API key" to the client; why (missing, unknown, revoked, ...) and the
key id go to the server's log.
"""

from __future__ import annotations

import asyncio

import structlog

from events.access import Principal
from events.errors import IllegalTransition
from events.identity import UserState, authenticate, copy_state, evolve, key_index
from events.model import UserEvent
from services.core.store import EventStore

_PAGE = 5000
log = structlog.get_logger("api.users")


class Directory:
    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._after = "0"
        self._users: dict[str, UserState] = {}
        self._index: dict[str, UserState] = {}
        self._lock = asyncio.Lock()

    async def catch_up(self) -> None:
        """Fold the user events appended since the last catch-up."""
        async with self._lock:
            changed = False
            while True:
                records = await self._store.read_log(after=self._after, count=_PAGE)
                for record in records:
                    event = record.event
                    if isinstance(event, UserEvent):
                        before = self._users.get(event.user)
                        state = None if before is None else copy_state(before)
                        try:
                            self._users[event.user] = evolve(state, event)
                        except IllegalTransition:  # refused at append; never in a valid log
                            log.warning("user_event_refused", position=record.position)
                            continue
                        changed = True
                if records:
                    self._after = records[-1].position
                if len(records) < _PAGE:
                    break
            if changed:
                self._index = key_index(self._users.values())

    async def principal(self, presented: str | None, now_ms: int) -> Principal:
        """The owner of ``presented``; ``events.identity.Unauthenticated`` if none."""
        await self.catch_up()
        return authenticate(self._index, presented, now_ms)
