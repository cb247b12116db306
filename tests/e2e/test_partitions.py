"""The whole stack on a log of three partitions (``mcli dev up --partitions 3``: every service
has ``RUNPLANE_PARTITIONS=3``): runs on every partition go through the lifecycle, stop and
restart, and each is projected (the projector follows every partition)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import LocalStack, StackConfig
from events import commands, keys
from events.status import RunStatus
from projections import query
from tests.e2e.driver import USER, Driver, spec, stack_up
from tests.waiting import eventually

S = RunStatus
P = 3
pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    """The stack of ``tests/e2e/conftest.py``, its log in three partitions."""
    config = StackConfig(
        nodes=4,
        gpus_per_node=8,
        grace_period_s=2.0,
        partitions=P,
        extra_env={
            "RUNPLANE_NODE_TIMEOUT_S": "3",
            "RUNPLANE_HEARTBEAT_TTL_S": "3",
        },
    )
    with stack_up(tmp_path / "stack", config) as local:
        yield local


async def projected(driver: Driver, run_id: str, status: S) -> None:
    async def row() -> S | None:
        found = await query.get_run(driver.store.redis, run_id)
        return None if found is None else found.status

    await eventually(row, equals=status, what=f"{run_id} projected {status.value}")


async def test_runs_on_every_partition_complete_and_are_projected(driver: Driver) -> None:
    assert driver.store.settings.partitions == P
    run_ids: list[str] = []
    while len(run_ids) < 9 or {keys.partition_of(f"run:{r}", P) for r in run_ids} != set(
        range(P)
    ):  # a run's id is random, so its partition: until every partition has some
        assert len(run_ids) < 100, "100 runs and still a partition without any"
        run_ids.append(await driver.submit(spec("echo hello")))
    for run_id in run_ids:
        state = await driver.wait_for(run_id, S.COMPLETED, S.FAILED, S.STOPPED)
        assert state.status is S.COMPLETED
        await projected(driver, run_id, S.COMPLETED)
    assert len(await driver.placements()) == len(run_ids)
    await driver.settled("projector")


async def test_stop_and_restart_on_three_partitions(driver: Driver) -> None:
    run_ids = [await driver.submit(spec("sleep 1000")) for _ in range(4)]
    for run_id in run_ids:
        await driver.wait_for(run_id, S.RUNNING)
        await driver.request(run_id, commands.StopRun(actor=USER))
    for run_id in run_ids:
        await driver.wait_for(run_id, S.STOPPED)
        await driver.request(run_id, commands.RestartRun(actor=USER))
    for run_id in run_ids:
        state = await driver.wait_for(run_id, S.RUNNING, attempt=1)
        assert [a.status for a in state.attempts] == [S.STOPPED, S.RUNNING]
        await projected(driver, run_id, S.RUNNING)
        await driver.request(run_id, commands.StopRun(actor=USER))
    for run_id in run_ids:
        await driver.wait_for(run_id, S.STOPPED, attempt=1)
        await projected(driver, run_id, S.STOPPED)
