"""The projector's ACL user on the session's server, for the tests that run the projector as
the projector process runs: logged in as that user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.core import acl
from tests.acl_users import login_as


@pytest.fixture
def projector_password(redis_url: str, tmp_path: Path) -> str:
    """The projector's ACL user, made on the server: its password."""
    login = login_as(redis_url, acl.PROJECTOR, tmp_path)
    return Path(login["RUNPLANE_REDIS_PASSWORD_FILE"]).read_text().strip()


@pytest.fixture
async def projector_user(
    redis: aioredis.Redis, redis_url: str, projector_password: str
) -> AsyncIterator[aioredis.Redis]:
    """A client logged in as the projector's ACL user, as the projector process is."""
    password = projector_password
    client = aioredis.Redis.from_url(redis_url, username=acl.PROJECTOR, password=password)
    try:
        yield client
    finally:
        await client.aclose()
