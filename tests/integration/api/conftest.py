"""The API app in-process (httpx's ASGI transport) over the session's real Valkey, seeded; or a
real ``python -m services.api`` process (``api_server``). Either logs in as the ``api`` ACL
user (``services.core.acl``) and must be refused nothing; the tests seed as the default user."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from events.model import Role
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.core import sealing
from services.core.acl import API
from services.core.client import connect
from services.core.store import EventStore
from tests.acl_users import login_as, refused, server_ms
from tests.integration.api.seed import ALICE, BOB, ROOT, Seeded, add_user_with_key, seed
from tests.integration.log_collector.helpers import collector
from tests.services import ServiceProcess
from tests.waiting import eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def api_server(redis_url: str, log: Path, **settings: str) -> AsyncIterator[str]:
    """A ``python -m services.api`` process on a free port, with ``RUNPLANE_<NAME>`` settings;
    its URL once it answers. It must exit 0 on SIGTERM and never have logged a key."""
    port = free_port()
    env = os.environ | {"RUNPLANE_REDIS_URL": redis_url, "RUNPLANE_API_PORT": str(port)}
    env |= login_as(redis_url, API, log.parent / "secrets")
    since = server_ms(redis_url)
    env |= {f"RUNPLANE_{name.upper()}": value for name, value in settings.items()}
    api = await ServiceProcess("services.api", env, log).start()
    url = f"http://127.0.0.1:{port}/graphql"

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                await client.post(url, json={"query": "{ __typename }"})
        except httpx.TransportError:
            return False
        return True

    try:
        await eventually(answers, what=f"the API server on port {port}")
        yield url
    finally:
        assert await api.stop() == 0, api.output()
        assert "rpk_" not in api.output(), "a key was logged"
        assert refused(redis_url, API, since) == []


@asynccontextmanager
async def logs_api(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path, **settings: str
) -> AsyncIterator[str]:
    """``api_server`` with a real log-collector beside it (its archive under ``tmp_path``)."""
    async with (
        collector(redis_url, redis, tmp_path / "archive"),
        api_server(redis_url, tmp_path / "api.log", **settings) as served,
    ):
        yield served


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
async def endpoint(redis_url: str, tmp_path: Path, seeded: Seeded) -> AsyncIterator[str]:
    """A real API process with a projector beside it, over the seeded log: its URL."""
    env = os.environ | {"RUNPLANE_REDIS_URL": redis_url}
    projector = await ServiceProcess("services.projector", env, tmp_path / "projector.log").start()
    try:
        async with api_server(redis_url, tmp_path / "api.log") as url:
            yield url
    finally:
        assert await projector.stop() == 0, projector.output()


@pytest.fixture
async def api(
    store: EventStore, redis_url: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    login = login_as(redis_url, API, tmp_path / "secrets")
    since = server_ms(redis_url)
    settings = ApiSettings(
        redis_url=redis_url,
        api_max_body_bytes=4096,
        redis_username=login["RUNPLANE_REDIS_USERNAME"],
        redis_password_file=Path(login["RUNPLANE_REDIS_PASSWORD_FILE"]),
    )
    app_store = EventStore.from_settings(settings)
    app = create_app(settings, app_store)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client
    finally:
        await app_store.close()
    assert refused(redis_url, API, since) == []


@dataclass
class Served:
    """An API process that keeps secrets (a keyring of its own), and a key of each of three
    users (``ALICE`` and ``BOB``, users; ``ROOT``, an admin)."""

    url: str
    keys: dict[str, str]
    keyring: Path
    log: Path
    #: Secret values the test used: none may be in the API's log (checked at teardown).
    values: list[str] = field(default_factory=list)


@pytest.fixture
async def served(store: EventStore, redis_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    roles: dict[str, Role] = {ALICE: "user", BOB: "user", ROOT: "admin"}
    presented = {name: await add_user_with_key(store, name, role) for name, role in roles.items()}
    keyring = sealing.provision(tmp_path / "secrets")
    log = tmp_path / "api.log"
    async with api_server(redis_url, log, secrets_keyring_file=str(keyring)) as url:
        served = Served(url, presented, keyring, log)
        yield served
    text = log.read_text()
    for value in served.values:
        assert value not in text, "a secret's value in the API's log"
