"""A GPU that fails under a running attempt, end to end: NVML faked at the library boundary
(``tests/fakes/pynvml``, first on the node-agent's path), everything above it real: the agent
registers NVML's GPUs by UUID, sees the injected Xid and appends ``node.gpu_failed``; the
scheduler ends the attempt (``GpuFailure`` naming the GPU) and places the retry elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cli.stack import LocalStack, StackConfig
from events.model import NodeGpuFailed
from events.status import RunStatus as S
from tests.e2e.driver import Driver, driving, spec, stack_up
from tests.fakes import PATH_ENTRY
from tests.fakes import pynvml as fake

GPUS = 4


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    path = tmp_path / "nvml.json"
    fake.machine(path, [fake.gpu(i) for i in range(GPUS)])
    return path


@pytest.fixture
def stack(tmp_path: Path, machine: Path) -> Iterator[LocalStack]:
    config = StackConfig(
        nodes=1,
        gpus_per_node=None,  # the agent asks NVML (the fake)
        grace_period_s=2.0,
        extra_env={
            "PYTHONPATH": PATH_ENTRY,
            fake.ENV: str(machine),
            "RUNPLANE_GPU_HEALTH_POLL_S": "0.5",
        },
    )
    with stack_up(tmp_path / "stack", config) as local:
        yield local


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    async with driving(stack, 1) as drive:
        try:
            yield drive
        finally:
            await drive.stop_all()


async def test_an_xid_fails_the_attempt_and_the_retry_avoids_the_gpu(
    driver: Driver, machine: Path
) -> None:
    [registered] = await driver.registrations()
    assert registered.gpu_uuids == [fake.gpu(i)["uuid"] for i in range(GPUS)]
    assert registered.gpu_type == "h100_80gb"

    run_id = await driver.submit(spec("sleep 600", gpus=2, retry_on_system_failure=True))
    first = (await driver.wait_for(run_id, S.RUNNING, attempt=0)).latest
    [rank] = first.ranks
    [scheduled] = await driver.placements()
    assert scheduled.ranks[0].gpu_uuids == [fake.gpu(g)["uuid"] for g in rank.gpus]

    bad = rank.gpus[1]
    fake.machine(machine, [fake.gpu(i) for i in range(GPUS)], xids=[{"gpu": bad, "xid": 79}])
    retried = await driver.wait_for(run_id, S.RUNNING, attempt=1)

    failed = retried.attempts[0]
    assert failed.status is S.FAILED
    assert failed.reason is not None
    assert (failed.reason.category, failed.reason.code) == ("system", "GpuFailure")
    assert failed.reason.message == f"Xid 79 on GPU {bad} ({fake.gpu(bad)['uuid']})"
    assert bad not in retried.latest.ranks[0].gpus
    reports = [r.event async for r in driver.store.replay() if isinstance(r.event, NodeGpuFailed)]
    assert [(e.gpu, e.error) for e in reports] == [(bad, "Xid 79")]
