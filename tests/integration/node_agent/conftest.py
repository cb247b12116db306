"""Fixtures: agents as real processes (always cleaned up, with their shims), the scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.integration.node_agent.harness import Agent, MiniScheduler

AgentFactory = Callable[..., Agent]


@pytest.fixture
async def make_agent(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> AsyncIterator[AgentFactory]:
    """Agents on an emptied server; each has its data dir under ``tmp_path``."""
    agents: list[Agent] = []

    def make(node: str = "node-a", **settings: Any) -> Agent:
        agent = Agent(redis_url, tmp_path / node, node, **settings)
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            await agent.cleanup()


@pytest.fixture
async def scheduler(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[MiniScheduler]:
    async with MiniScheduler(redis_url) as mini:
        yield mini
