"""Users and their API keys: the fold of a user's history, the decisions, and who a key is.

A user is an aggregate of its own (``user:<name>``): ``user.added`` opens it, and the user's
keys are issued and revoked in it, so every write appends on the user's expected version like a
run's. ``evolve(state, event)`` refuses with ``IllegalTransition`` what the rules forbid:
anything before the user is added, adding a user twice, a second key with a known id, a key
hash that is not a SHA-256 hex digest, revoking a key that is unknown or revoked already, and
what ``events.secrets.apply`` refuses of a user's secrets.

A key reads ``rpk_<key id>_<secret>``. The key id is public (listings, audit, revocation); the
secret is ``secrets.token_urlsafe(32)`` (256 bits) and is shown once. The log keeps only
``sha256(secret)`` as hex: an API key is a high-entropy random token, not a password, so a fast
hash is the standard choice (a slow one, bcrypt or argon2, defends guessable secrets and would
only cost every request time). Hashes are compared with ``hmac.compare_digest`` (constant time).

Pure: no IO, no clock, no randomness. The edge draws the key id (``KEY_ID_ALPHABET``,
``KEY_ID_LENGTH``, with ``secrets``) and the secret and passes them to ``new_key``; it passes
``now`` to the decisions and to ``authenticate``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import NamedTuple, NoReturn, assert_never

import msgspec

from events import secrets
from events.access import Principal
from events.errors import EventsError, IllegalTransition
from events.model import (
    AnyUserEvent,
    KeyIssued,
    KeyRevoked,
    RequestRefused,
    Role,
    SecretCreated,
    SecretDeleted,
    UserAdded,
    UserEvent,
    tag_of,
)
from events.secrets import SecretState

#: The actor of the events that set up a deployment's first admin (no admin exists to do it).
SETUP_ACTOR = "runplane@setup"
KEY_PREFIX = "rpk_"
KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
KEY_ID_LENGTH = 12  # 62 bits: ids are unique by chance, and an issue refuses a known one
_KEY_ID = re.compile(r"[a-z0-9]{8,32}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{32,128}")
_HASH = re.compile(r"[0-9a-f]{64}")
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_MAX_KEY_CHARS = len(KEY_PREFIX) + 32 + 1 + 128


class KeyState(msgspec.Struct, kw_only=True):
    key_id: str
    key_hash: str
    issued_at: int
    issued_by: str
    expires_at: int | None = None
    revoked_at: int | None = None
    revoked_by: str | None = None

    def valid_at(self, now_ms: int) -> bool:
        """Not revoked, and not expired: a key is refused from ``expires_at`` on."""
        return self.revoked_at is None and (self.expires_at is None or now_ms < self.expires_at)


class UserState(msgspec.Struct, kw_only=True):
    name: str
    role: Role
    added_at: int
    added_by: str
    #: Events folded so far; the expected version of the next append.
    version: int = 0
    keys: dict[str, KeyState] = msgspec.field(default_factory=dict)
    #: The user's secrets by name, as the log has them: names and types, never values.
    secrets: dict[str, SecretState] = msgspec.field(default_factory=dict)

    @property
    def principal(self) -> Principal:
        return Principal(name=self.name, role=self.role)


# --- the fold ---------------------------------------------------------------------------------


def evolve(state: UserState | None, event: AnyUserEvent) -> UserState:
    """``state`` after ``event`` (updated in place); ``IllegalTransition`` if the rules forbid
    it."""
    if state is None:
        return _open(event)
    if event.user != state.name:
        _refuse(event, f"it belongs to user {event.user}, not {state.name}")
    match event:
        case UserAdded():
            _refuse(event, "the user exists already")
        case KeyIssued():
            _issue(state, event)
        case RequestRefused():
            pass  # a record of what was refused: the user's keys and role stay as they are
        case SecretCreated() | SecretDeleted():
            secrets.apply(state.secrets, event)
        case KeyRevoked():
            key = state.keys.get(event.key_id)
            if key is None:
                _refuse(event, f"user {state.name} has no key {event.key_id}")
            if key.revoked_at is not None:
                _refuse(event, f"key {event.key_id} is revoked already")
            key.revoked_at, key.revoked_by = event.time, event.actor
        case _:
            assert_never(event)
    state.version += 1
    return state


def fold(events: Iterable[AnyUserEvent]) -> UserState | None:
    state: UserState | None = None
    for event in events:
        state = evolve(state, event)
    return state


def copy_state(state: UserState) -> UserState:
    return msgspec.convert(msgspec.to_builtins(state), UserState)


def _open(event: AnyUserEvent) -> UserState:
    if not isinstance(event, UserAdded):
        _refuse(event, "the user does not exist")
    if not _USER_NAME.fullmatch(event.user):
        _refuse(event, "a user name is 1 to 128 letters, digits or ._@+- (a letter or digit first)")
    return UserState(
        name=event.user, role=event.role, added_at=event.time, added_by=event.actor, version=1
    )


def _issue(state: UserState, event: KeyIssued) -> None:
    if not _KEY_ID.fullmatch(event.key_id):
        _refuse(event, "a key id is 8 to 32 lowercase letters or digits")
    if event.key_id in state.keys:
        _refuse(event, f"key {event.key_id} was issued already")
    if not _HASH.fullmatch(event.key_hash):
        _refuse(event, "a key hash is a SHA-256 digest in lowercase hex")
    if event.expires_at is not None and event.expires_at <= 0:
        _refuse(event, "expires_at is a time in ms since the epoch")
    state.keys[event.key_id] = KeyState(
        key_id=event.key_id,
        key_hash=event.key_hash,
        issued_at=event.time,
        issued_by=event.actor,
        expires_at=event.expires_at,
    )


def _refuse(event: UserEvent, why: str) -> NoReturn:
    raise IllegalTransition(event.aggregate, tag_of(type(event)), why)


# --- keys ---------------------------------------------------------------------------------------


class NewKey(NamedTuple):
    """A key as it is shown once (``presented``), and what the log keeps of it."""

    presented: str
    key_id: str
    key_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(key_id: str, secret: str) -> NewKey:
    """The key made of ``key_id`` and ``secret`` (both drawn at the edge; see the module)."""
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError("a key id is 8 to 32 lowercase letters or digits")
    if not _SECRET.fullmatch(secret):
        raise ValueError("a secret is 32 to 128 URL-safe characters (secrets.token_urlsafe(32))")
    return NewKey(f"{KEY_PREFIX}{key_id}_{secret}", key_id, hash_secret(secret))


def key_index(users: Iterable[UserState]) -> dict[str, UserState]:
    """Each key id -> the user it was issued to. An id that two users hold (the per-user
    aggregate cannot rule it out; ``issue_key`` refuses a known one) is left out: neither key
    works, rather than one user being taken for the other."""
    index: dict[str, UserState] = {}
    shared: set[str] = set()
    for user in users:
        for key_id in user.keys:
            if key_id in index:
                shared.add(key_id)
            index[key_id] = user
    for key_id in shared:
        del index[key_id]
    return index


class Why(StrEnum):
    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"  # no such key id, or the secret does not match
    REVOKED = "revoked"
    EXPIRED = "expired"


class Unauthenticated(EventsError):
    """No valid API key: the API server answers 401 ("Invalid API key") whatever ``why`` is;
    ``why`` and ``key_id`` are for the server's log and the audit, not for the client."""

    def __init__(self, why: Why, key_id: str | None = None) -> None:
        super().__init__(f"invalid API key ({why})")
        self.why = why
        self.key_id = key_id


def parse_key(presented: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a key of the right shape, else None."""
    if len(presented) > _MAX_KEY_CHARS or not presented.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = presented.removeprefix(KEY_PREFIX).partition("_")
    if not sep or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


def authenticate(
    users_by_key_id: Mapping[str, UserState], presented: str | None, now_ms: int
) -> Principal:
    """Who ``presented`` is; ``Unauthenticated`` for a missing, malformed, unknown, revoked or
    expired key. The secret is checked first, so a caller who knows only a key id (it is not
    secret) learns nothing of that key's state."""
    if not presented:
        raise Unauthenticated(Why.MISSING)
    parsed = parse_key(presented)
    if parsed is None:
        raise Unauthenticated(Why.MALFORMED)
    key_id, secret = parsed
    user = users_by_key_id.get(key_id)
    key = user.keys.get(key_id) if user is not None else None
    if user is None or key is None or not hmac.compare_digest(hash_secret(secret), key.key_hash):
        raise Unauthenticated(Why.UNKNOWN, key_id)
    if key.revoked_at is not None:
        raise Unauthenticated(Why.REVOKED, key_id)
    if not key.valid_at(now_ms):
        raise Unauthenticated(Why.EXPIRED, key_id)
    return user.principal


# --- decisions ------------------------------------------------------------------------------


class IdentityRefused(EventsError):
    """A request about users or keys that cannot be carried out (the API answers 409, or 404
    for an unknown user or key)."""

    def __init__(self, subject: str, why: str, *, missing: bool = False) -> None:
        super().__init__(f"{subject}: {why}")
        self.subject = subject
        self.why = why
        self.missing = missing


def add_user(
    state: UserState | None, name: str, role: Role, actor: str, event_id: str
) -> UserAdded:
    """The event that adds user ``name``; refused if the user exists."""
    if state is not None:
        raise IdentityRefused(f"user {name}", "the user exists already")
    event = UserAdded(id=event_id, actor=actor, user=name, role=role)
    evolve(None, event)  # the rules say why a name is refused
    return event


def issue_key(
    state: UserState | None,
    key: NewKey,
    actor: str,
    event_id: str,
    *,
    now_ms: int,
    expires_at: int | None = None,
    known: Mapping[str, UserState] | None = None,
) -> KeyIssued:
    """The event that issues ``key`` to the user of ``state``; refused for an unknown user, a key
    id any user holds already (``known``: ``key_index`` of every user), or an expiry that is not
    after ``now_ms``."""
    if state is None:
        raise IdentityRefused("user", "no such user", missing=True)
    if key.key_id in state.keys or (known is not None and key.key_id in known):
        raise IdentityRefused(f"key {key.key_id}", "a key with this id exists already")
    if expires_at is not None and expires_at <= now_ms:
        raise IdentityRefused(f"key {key.key_id}", "the expiry is not in the future")
    event = KeyIssued(
        id=event_id,
        actor=actor,
        user=state.name,
        key_id=key.key_id,
        key_hash=key.key_hash,
        expires_at=expires_at,
    )
    evolve(copy_state(state), event)
    return event


def revoke_key(state: UserState | None, key_id: str, actor: str, event_id: str) -> KeyRevoked:
    """The event that revokes key ``key_id`` of the user of ``state``; refused for an unknown
    user or key, or a key revoked already."""
    if state is None or key_id not in state.keys:
        raise IdentityRefused(f"key {key_id}", "no such key", missing=True)
    if state.keys[key_id].revoked_at is not None:
        raise IdentityRefused(f"key {key_id}", "the key is revoked already")
    return KeyRevoked(id=event_id, actor=actor, user=state.name, key_id=key_id)
