"""The API app in-process (httpx's ASGI transport) over the session's real Valkey, seeded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.core.store import EventStore, connect
from tests.integration.api.seed import Seeded, seed


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    settings = ApiSettings(redis_url=redis_url)
    store = EventStore(connect(redis_url), settings)
    yield store
    await store.close()


@pytest.fixture
async def seeded(store: EventStore) -> Seeded:
    return await seed(store)


@pytest.fixture
async def api(store: EventStore, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ApiSettings(redis_url=redis_url, api_max_body_bytes=4096), store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client
