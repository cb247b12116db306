"""Fixtures: agents as real processes (always cleaned up, with their shims), the scheduler, and
for the ``container`` executor a private podman and registry (``bench.podlab``), checked once by
running a container, with the images the tests pull."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bench.podlab import LabError, Podlab, busybox_tar, python_tar
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


# --- containers ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def podlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podlab]:
    """Podman and a registry of this session's own; skips, with the reason, where podman
    cannot run a container (tried once)."""
    try:
        lab = Podlab(tmp_path_factory.mktemp("podlab"))
    except LabError as exc:
        pytest.skip(f"containers: {exc}")
    problem = lab.problem()
    if problem is not None:
        lab.close()
        pytest.skip(f"containers: {problem}")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def busybox_image(podlab: Podlab) -> str:
    """busybox with a marker file, in the lab's registry (not in the node's cache)."""
    return podlab.push(busybox_tar(), "busybox:1")


@pytest.fixture(scope="session")
def python_image(podlab: Podlab) -> str:
    """Debian with python3, venv and git, in the lab's registry (made once: ``python_tar``)."""
    try:
        return podlab.push(python_tar(), "python:1")
    except LabError as exc:
        pytest.skip(f"containers: the Python image: {exc}")


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
