"""Fixtures: agents as real processes (always cleaned up, with their shims), the scheduler, and
for the ``container`` executor a private podman and registry (``bench.podlab``), checked once by
running a container, with the images the tests pull."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bench.podlab import Podlab
from tests.integration.node_agent.harness import Agent, MiniScheduler
from tests.podlab_fixtures import busybox_image, podlab, python_image

__all__ = ["busybox_image", "podlab", "python_image"]  # fixtures, for this directory's tests

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


# --- containers ---------------------------------------------------------------------------------


@pytest.fixture
async def container_agent(make_agent: AgentFactory, podlab: Podlab) -> AsyncIterator[AgentFactory]:
    """Agents with the container executor on the lab's podman; their containers are removed
    after the test."""

    def make(node: str = "node-a", **settings: Any) -> Agent:
        return make_agent(
            node, env=podlab.env, executor="container", container_conf=podlab.conf, **settings
        )

    try:
        yield make
    finally:
        podlab.podman("rm", "--all", "--force", "--time", "0", timeout=120)
