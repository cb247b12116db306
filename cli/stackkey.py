"""Admins made by the operator, on the log itself (no admin exists yet to ask the API): the local
stack's, whose key waits in the state directory for ``mcli dev env`` to print it; and a
deployment's first (``mcli admin bootstrap``), whose key is shown once.

Invariants:
- The user is added (``user.added``, role admin) and a key issued (``key.issued``) through the
  event store, on the user's expected version, by ``SETUP_ACTOR``; the log keeps only the key's
  hash (``events.identity``).
- The key itself is in one file, ``api-key`` in the state directory, created with mode 0600 (a
  temp file opened with that mode, then renamed over the old one): it is never readable by
  another user, not even for an instant. Nothing here prints or logs it; ``mcli dev env`` is the
  one command that prints it, as its purpose is.
- ``ensure_admin`` is idempotent: a key in the file that is still a valid key of the user is
  kept; a lost or stale file (the user exists, the key does not) gets a new key.
"""

from __future__ import annotations

import hmac
import uuid
from pathlib import Path

from events.identity import (
    SETUP_ACTOR,
    UserState,
    add_user,
    hash_secret,
    issue_key,
    new_key,
    parse_key,
)
from services.api.accounts import Accounts, load_user
from services.api.users import Directory
from services.core.draw import draw_credential
from services.core.private import write_private
from services.core.settings import Settings
from services.core.store import EventStore

KEY_FILE = "api-key"


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def read_key(state_dir: Path) -> str | None:
    """The admin's key, or None if the file is missing or empty."""
    try:
        key = key_path(state_dir).read_text().strip()
    except FileNotFoundError:
        return None
    return key or None


async def first_admin(settings: Settings, name: str) -> str:
    """Add ``name`` as an admin with a first key, by ``SETUP_ACTOR``; the key as shown once.
    ``IdentityRefused`` if the user exists, ``IllegalTransition`` for a name the rules refuse."""
    store = EventStore.from_settings(settings)
    try:
        _, key = await Accounts(store, Directory(store)).add(SETUP_ACTOR, name, "admin")
    finally:
        await store.close()
    return key


async def ensure_admin(store: EventStore, state_dir: Path, user: str, now_ms: int) -> bool:
    """Make ``user`` an admin with a key in the state directory (see the module); whether a new
    key was issued."""
    state = await load_user(store, user)
    if state is None:
        added = add_user(None, user, "admin", SETUP_ACTOR, uuid.uuid4().hex)
        await store.append([added], expected_version=0)
        state = await load_user(store, user)
        assert state is not None
    if _holds(state, read_key(state_dir), now_ms):
        return False
    key = new_key(*draw_credential())
    issued = issue_key(state, key, SETUP_ACTOR, uuid.uuid4().hex, now_ms=now_ms)
    await store.append([issued], expected_version=state.version)
    write_private(key_path(state_dir), key.presented)
    return True


def _holds(state: UserState, presented: str | None, now_ms: int) -> bool:
    parsed = None if presented is None else parse_key(presented)
    if parsed is None:
        return False
    key_id, secret = parsed
    key = state.keys.get(key_id)
    return (
        key is not None
        and key.valid_at(now_ms)
        and hmac.compare_digest(key.key_hash, hash_secret(secret))
    )
