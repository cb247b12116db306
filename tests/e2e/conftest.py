"""The whole stack as real processes: a private Valkey, the scheduler, the log-collector and
node-agents with simulated GPUs, driven through the log like the CLI drives it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cli.stack import LocalStack, StackConfig
from tests.e2e.driver import SHAPES, Driver, driving, stack_up
from tests.podlab_fixtures import busybox_image, podlab

__all__ = ["busybox_image", "podlab"]  # fixtures, for the tests that run containers

NODES = 4


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    shards, replicas, partitions = SHAPES[getattr(request, "param", "one-server")]
    config = StackConfig(
        nodes=NODES,
        gpus_per_node=8,
        grace_period_s=2.0,
        extra_env={
            "RUNPLANE_NODE_TIMEOUT_S": "3",
            "RUNPLANE_HEARTBEAT_TTL_S": "3",
        },
        shards=shards,
        replicas=replicas,
        partitions=partitions,
    )
    with stack_up(tmp_path / "stack", config) as local:
        yield local


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    async with driving(stack, NODES) as drive:
        yield drive
