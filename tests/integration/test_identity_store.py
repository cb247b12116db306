"""Users and API keys through the real event store: a user's aggregate, appended on its expected
version, folded back from the log, and a key that works until it is revoked."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from events import keys
from events.access import Principal
from events.identity import (
    KEY_ID_ALPHABET,
    KEY_ID_LENGTH,
    SETUP_ACTOR,
    Unauthenticated,
    UserState,
    Why,
    add_user,
    authenticate,
    fold,
    issue_key,
    key_index,
    new_key,
    revoke_key,
)
from events.model import AnyUserEvent, UserEvent
from services.core.client import connect
from services.core.errors import VersionConflict
from services.core.settings import Settings
from services.core.store import EventStore
from tests import raw


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


def new_id() -> str:
    return uuid.uuid4().hex


async def load_user(store: EventStore, name: str) -> UserState | None:
    events: list[AnyUserEvent] = []
    for record in await store.history(f"user:{name}"):
        assert isinstance(record.event, UserEvent)
        events.append(record.event)
    state = fold(events)
    assert state is None or state.version == len(events)
    return state


async def test_a_user_a_key_and_its_revocation_fold_back_from_the_log(
    store: EventStore, redis: aioredis.Redis
) -> None:
    name = "alice@example.com"
    secret = secrets.token_urlsafe(32)
    key_id = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    key = new_key(key_id, secret)

    added = add_user(await load_user(store, name), name, "user", SETUP_ACTOR, new_id())
    assert (await store.append([added], expected_version=0)).version == 1
    state = await load_user(store, name)
    now = int((await redis.time())[0]) * 1000
    issued = issue_key(state, key, SETUP_ACTOR, new_id(), now_ms=now, expires_at=now + 60_000)
    assert (await store.append([issued], expected_version=1)).version == 2

    state = await load_user(store, name)
    assert state is not None
    assert state.keys[key_id].key_hash == key.key_hash
    assert state.keys[key_id].issued_at > 0, "the log stamped its time"
    principal = authenticate(key_index([state]), key.presented, now)
    assert principal == Principal(name=name, role="user")

    partition = keys.partition_of(f"user:{name}", store.settings.partitions)
    stored = b""
    for stream in (keys.aggregate_stream(f"user:{name}", partition), keys.log_stream(partition)):
        for _, fields in await raw.xrange(redis, stream):
            stored += b"".join(fields.values())
    assert secret.encode() not in stored
    assert key.presented.encode() not in stored
    assert key.key_hash.encode() in stored

    revoked = revoke_key(state, key_id, "root", new_id())
    with pytest.raises(VersionConflict):  # a writer that read an older version lost the race
        await store.append([revoked], expected_version=1)
    assert (await store.append([revoked], expected_version=2)).version == 3
    state = await load_user(store, name)
    assert state is not None
    assert state.keys[key_id].revoked_by == "root"
    with pytest.raises(Unauthenticated) as refusal:
        authenticate(key_index([state]), key.presented, now)
    assert refusal.value.why is Why.REVOKED

    in_the_log = [
        r.event for r in await store.read_log(partition) if isinstance(r.event, UserEvent)
    ]
    assert [e.id for e in in_the_log] == [added.id, issued.id, revoked.id]
