"""The local stack's admin through the real event store: added once with a key whose hash alone
is in the log and whose file only its owner may read; the key is kept while it is valid, and a
lost or stale file gets a new one."""

from __future__ import annotations

import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cli.stackkey import ensure_admin, key_path, read_key
from events import keys
from events.identity import authenticate, fold, key_index, parse_key
from events.model import KeyIssued, UserAdded, UserEvent
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from tests import raw

NOW = 1_800_000_000_000


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


async def events_of(store: EventStore, user: str) -> list[UserEvent]:
    return [r.event for r in await store.history(f"user:{user}") if isinstance(r.event, UserEvent)]


async def test_the_admin_is_added_once_and_keeps_a_valid_key(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    user = f"dev-{uuid.uuid4().hex[:8]}"
    assert await ensure_admin(store, tmp_path, user, NOW) is True
    key = read_key(tmp_path)
    assert key is not None
    assert stat.S_IMODE(key_path(tmp_path).stat().st_mode) == 0o600
    [added, issued] = await events_of(store, user)
    assert isinstance(added, UserAdded)
    assert added.role == "admin"
    assert isinstance(issued, KeyIssued)
    state = fold(await events_of(store, user))  # type: ignore[arg-type]
    assert state is not None
    assert authenticate(key_index([state]), key, NOW).name == user

    partition = keys.partition_of(f"user:{user}", store.settings.partitions)
    stored = b"".join(
        b"".join(fields.values())
        for _, fields in await raw.xrange(redis, keys.log_stream(partition))
    )
    parsed = parse_key(key)
    assert parsed is not None
    assert parsed[1].encode() not in stored, "only the hash is in the log"

    assert await ensure_admin(store, tmp_path, user, NOW) is False  # kept
    assert read_key(tmp_path) == key
    assert len(await events_of(store, user)) == 2


async def test_a_lost_or_stale_key_file_gets_a_new_key(store: EventStore, tmp_path: Path) -> None:
    user = f"dev-{uuid.uuid4().hex[:8]}"
    await ensure_admin(store, tmp_path, user, NOW)
    first = read_key(tmp_path)
    key_path(tmp_path).unlink()
    assert await ensure_admin(store, tmp_path, user, NOW) is True
    second = read_key(tmp_path)
    assert second not in (None, first)
    key_path(tmp_path).write_text("rpk_notakeyofhers_" + "x" * 43 + "\n")
    assert await ensure_admin(store, tmp_path, user, NOW) is True
    kinds = [type(e).__name__ for e in await events_of(store, user)]
    assert kinds == ["UserAdded", "KeyIssued", "KeyIssued", "KeyIssued"]
