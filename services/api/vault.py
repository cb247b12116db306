"""The API's side of users' secrets: decided on the owner's history, sealed, stored, logged.

Invariants:
- The log holds that a secret was created or deleted, by name and type (``events.secrets``);
  each write is decided on the owner's state read from their history (``user:<name>``) and
  appended on that version; a lost race re-reads and re-decides, so two creates of one name
  give one secret and one 409.
- Order of the writes, so that a crash anywhere leaves no value of a deleted secret:
  **create** appends ``secret.created`` first, then stores the sealed value (a crash between
  leaves a secret listed without a value: ``Listed.stored`` false; delete it and create it
  again); **delete** removes the value first, then appends ``secret.deleted``, then removes it
  once more (a create's value that landed in between). A value is removed only if it is the
  deleted secret's (its id is the ``secret.created`` event's): never a newer secret's.
- A value is sealed under the keyring's newest key as the file has it now (``KeyringFile``
  re-reads a rotated file); if a rotation dropped that key while the value was being stored, it
  is sealed again with the keys the file has then.
- The value is in this process only between the request and its sealing: never logged, never in
  an answer, an event or an error.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from events import secrets
from events.identity import UserState
from events.secrets import Secret, SecretRefused, SecretState
from services.api.accounts import load_user
from services.core import sealing
from services.core.errors import VersionConflict
from services.core.sealing import KeyringFile, Sealed, SealingError
from services.core.secretstore import SecretValues
from services.core.store import EventStore

_TRIES = 20


class NotConfigured(Exception):
    """This API server has no keyring: it cannot seal a secret."""


@dataclass(frozen=True)
class Listed:
    """A live secret as ``getSecrets`` shows it: what the log has, and the metadata of its
    stored value (None when no value is stored: a create cut short)."""

    owner: str
    state: SecretState
    metadata: dict[str, str] | None

    @property
    def stored(self) -> bool:
        return self.metadata is not None


def new_id() -> str:
    return uuid.uuid4().hex


class Vault:
    def __init__(self, store: EventStore, keyring: KeyringFile | None) -> None:
        self.store = store
        self.values = SecretValues(store.redis)
        self.keyring = keyring

    async def _user(self, owner: str) -> UserState:
        state = await load_user(self.store, owner)
        if state is None:
            raise SecretRefused(owner, "-", f"there is no user {owner}", missing=True)
        return state

    async def _stored(self, owner: str) -> dict[str, Sealed]:
        """The readable part of each of ``owner``'s stored values, by name."""
        found = {}
        for name, data in (await self.values.all(owner)).items():
            try:
                found[name] = sealing.peek(data)
            except SealingError:
                continue  # not a sealed value: nothing of it is shown
        return found

    async def listing(self, owner: str) -> list[Listed]:
        """``owner``'s live secrets, by name. Values are read before the history: a value seen
        is never taken for one of no live secret."""
        stored = await self._stored(owner)
        state = await self._user(owner)
        listed = []
        for name, known in sorted(state.secrets.items()):
            value = stored.get(name)
            live = value is not None and value.secret_id == known.secret_id
            listed.append(Listed(owner, known, dict(value.metadata) if live and value else None))
        return listed

    async def create(self, actor: str, owner: str, secret: Secret) -> Listed:
        """Create ``secret`` for ``owner``: ``BadSecret`` (400), ``SecretRefused`` (409),
        ``NotConfigured`` without a keyring."""
        if self.keyring is None:
            raise NotConfigured
        keyring = self.keyring.current()  # a keyring that cannot be read fails before the log
        for _ in range(_TRIES):
            state = await self._user(owner)
            taken = {
                name: where
                for name, value in (await self._stored(owner)).items()
                if (where := secrets.destination(value.secret_type, value.metadata)) is not None
            }
            event = secrets.create(owner, state.secrets, secret, actor, new_id(), taken=taken)
            try:
                await self.store.append([event], expected_version=state.version)
            except VersionConflict:
                continue
            break
        else:
            raise VersionConflict(f"user:{owner}", -1, -1)
        keyring = self.keyring.current()
        data = sealing.seal(keyring, owner, secret, event.id)
        await self.values.put(owner, secret.name, data)
        after = await self._user(owner)
        known = after.secrets.get(secret.name)
        if known is None or known.secret_id != event.id:  # deleted while it was being stored
            await self.values.remove(owner, secret.name, event.id)
        else:
            await self._reseal_if_dropped(owner, secret, event.id, keyring, data)
        state_now = known or secrets.SecretState(
            name=secret.name,
            secret_type=secret.secret_type,
            secret_id=event.id,
            created_at=_now_ms(),
            created_by=actor,
        )
        return Listed(owner, state_now, dict(secret.metadata))

    async def _reseal_if_dropped(
        self, owner: str, secret: Secret, secret_id: str, used: sealing.Keyring, data: bytes
    ) -> None:
        assert self.keyring is not None
        now = self.keyring.current()
        if now.key(used.newest) is not None:
            return
        again = sealing.seal(now, owner, secret, secret_id)
        await self.values.replace(owner, secret.name, data, again)

    async def delete(self, actor: str, owner: str, names: list[str]) -> list[Listed]:
        """Delete ``owner``'s secrets ``names``, all or none: ``SecretRefused`` (missing) for a
        name they do not have."""
        wanted = list(dict.fromkeys(names))
        for _ in range(_TRIES):
            state = await self._user(owner)
            events = [secrets.delete(owner, state.secrets, n, actor, new_id()) for n in wanted]
            gone = [state.secrets[name] for name in wanted]
            listed = await self.listing(owner)
            shown = {item.state.name: item for item in listed}
            for known in gone:
                await self.values.remove(owner, known.name, known.secret_id)
            try:
                await self.store.append(list(events), expected_version=state.version)
            except VersionConflict:
                continue
            for known in gone:
                await self.values.remove(owner, known.name, known.secret_id)
            return [shown.get(k.name) or Listed(owner, k, None) for k in gone]
        raise VersionConflict(f"user:{owner}", -1, -1)


def _now_ms() -> int:
    return int(time.time() * 1000)
