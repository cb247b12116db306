"""The whole stack as real processes: a private Valkey, the scheduler, the log-collector and
node-agents with simulated GPUs, driven through the log like the CLI drives it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cli.stack import LocalStack, StackConfig
from services.core.settings import Settings
from services.core.store import EventStore, connect
from tests.e2e.driver import Driver


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path / "stack")
    local.up(
        StackConfig(
            nodes=4,
            gpus_per_node=8,
            grace_period_s=2.0,
            extra_env={"RUNPLANE_NODE_TIMEOUT_S": "3", "RUNPLANE_HEARTBEAT_TTL_S": "3"},
        )
    )
    try:
        yield local
    finally:
        local.down()
        _dump_logs_on_failure(local)


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    store = EventStore(connect(stack.url), Settings(redis_url=stack.url))
    drive = Driver(store, stack)
    await drive.wait_for_nodes(4)
    yield drive
    await store.close()


def _dump_logs_on_failure(stack: LocalStack) -> None:
    for name in stack.services:
        path = stack.log_of(name)
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {name} ---", *tail, sep="\n")
