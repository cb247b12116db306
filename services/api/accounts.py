"""Users and API keys, as an admin manages them through the API: list, add, issue, revoke.

Invariants:
- only an admin manages them (``events.access.administer``); the actor of every event is the
  admin's key's owner;
- each write is decided on the user's state read from its own history (``user:<name>``) by the
  rules of ``events.identity`` and appended on that version; a lost race re-reads and
  re-decides. A new user and their first key are one append, so a user never exists without
  the key the admin was shown;
- a key is drawn here with ``secrets`` and returned once, to the admin who asked; only its
  hash reaches the log, and it is never logged.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from events.identity import (
    IdentityRefused,
    KeyState,
    UserState,
    add_user,
    fold,
    issue_key,
    key_index,
    new_key,
    revoke_key,
)
from events.model import AnyUserEvent, Role, UserEvent
from services.api.users import Directory
from services.core.draw import draw_credential
from services.core.errors import VersionConflict
from services.core.store import EventStore

_TRIES = 20


def _new_id() -> str:
    return uuid.uuid4().hex


def _now_ms() -> int:
    return int(time.time() * 1000)


async def load_user(store: EventStore, name: str) -> UserState | None:
    """User ``name`` folded from their own history (None: no such user)."""
    history = await store.history(f"user:{name}")
    return fold([r.event for r in history if isinstance(r.event, UserEvent)])


class Accounts:
    def __init__(self, store: EventStore, directory: Directory) -> None:
        self.store = store
        self.directory = directory

    async def user(self, name: str) -> UserState | None:
        return await load_user(self.store, name)

    async def users(self) -> list[UserState]:
        """Every user, by name, as of now (the directory caught up with the log)."""
        return await self.directory.users()

    async def add(
        self, actor: str, name: str, role: Role, *, expires_at: int | None = None
    ) -> tuple[UserState, str]:
        """Add user ``name`` with a first key; the user and the key as shown once."""
        return await self._with_key(actor, name, role, expires_at)

    async def issue(
        self, actor: str, name: str, *, expires_at: int | None = None
    ) -> tuple[UserState, str]:
        """Issue user ``name`` another key; the user and the key as shown once."""
        return await self._with_key(actor, name, None, expires_at)

    async def _with_key(
        self, actor: str, name: str, role: Role | None, expires_at: int | None
    ) -> tuple[UserState, str]:
        """A new key for user ``name``, added first (as ``role``) unless ``role`` is None."""
        key = new_key(*draw_credential())
        known = key_index(await self.users())

        def decide(state: UserState | None) -> list[AnyUserEvent]:
            added = [add_user(state, name, role, actor, _new_id())] if role is not None else []
            issued = issue_key(
                fold(added) if added else state,
                key,
                actor,
                _new_id(),
                now_ms=_now_ms(),
                expires_at=expires_at,
                known=known,
            )
            return [*added, issued]

        return await self._update(name, decide), key.presented

    async def revoke(self, actor: str, key_id: str) -> tuple[UserState, KeyState]:
        owner = key_index(await self.users()).get(key_id)
        if owner is None:
            raise IdentityRefused(f"key {key_id}", "no such key", missing=True)
        state = await self._update(
            owner.name, lambda state: [revoke_key(state, key_id, actor, _new_id())]
        )
        return state, state.keys[key_id]

    async def _update(
        self, name: str, decide: Callable[[UserState | None], Sequence[AnyUserEvent]]
    ) -> UserState:
        for _ in range(_TRIES):
            state = await self.user(name)
            events = decide(state)
            try:
                await self.store.append(
                    list(events), expected_version=state.version if state is not None else 0
                )
            except VersionConflict:
                continue
            after = await self.user(name)
            assert after is not None
            return after
        raise VersionConflict(f"user:{name}", -1, -1)
