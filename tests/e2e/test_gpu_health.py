"""NVML's GPUs end to end, NVML faked at the library boundary (``tests/fakes/pynvml``, first on
the node-agent's path), everything above it real. The agent registers NVML's GPUs by UUID; an
injected Xid becomes ``node.gpu_failed``, the scheduler ends the attempt (``GpuFailure`` naming
the GPU) and places the retry elsewhere. The agent's samples become gauges on its metrics port,
and each rank's summary on its ``rank.exited``: ``describe run`` and ``billing --by run``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cli.stack import LocalStack, StackConfig
from events.model import NodeGpuFailed, RankExited
from events.status import RunStatus as S
from tests.e2e.driver import Driver, driving, spec, stack_up
from tests.e2e.mcli_helpers import USER, Mcli, client_env, make_admin
from tests.fakes import PATH_ENTRY
from tests.fakes import pynvml as fake
from tests.waiting import eventually

GPUS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
            # first, so ``import pynvml`` finds the fake; what was there stays after it
            "PYTHONPATH": os.pathsep.join(filter(None, [PATH_ENTRY, os.environ.get("PYTHONPATH")])),
            fake.ENV: str(machine),
            "RUNPLANE_GPU_HEALTH_POLL_S": "0.5",
            "RUNPLANE_GPU_SAMPLE_INTERVAL_S": "0.2",
        },
    )
    with stack_up(tmp_path / "stack", config) as local:
        yield local


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    async with driving(stack, 1, stop_all=True) as drive:
        yield drive


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
    assert str(failed.reason) == f"GpuFailure: Xid 79 on GPU {bad} ({fake.gpu(bad)['uuid']})"
    assert bad not in retried.latest.ranks[0].gpus
    reports = [r.event async for r in driver.replay() if isinstance(r.event, NodeGpuFailed)]
    assert [(e.gpu, e.error) for e in reports] == [(bad, "Xid 79")]

    # `mcli util` counts it apart: neither available nor cordoned.
    await make_admin(driver.stack)
    mcli = Mcli(env={**os.environ, **client_env(driver.stack)}, stack=driver.stack)

    def util() -> str | None:
        shown = mcli.ok("util")
        return shown if "GPUS_FAILED" in shown else None

    header, row = (await eventually(util, what="the failed GPU in util")).splitlines()[1:3]
    cells = dict(zip(header.split(), row.split(), strict=True))
    assert (cells["GPUS_FAILED"], cells["GPUS_USED"], cells["GPUS_TOTAL"]) == ("1", "2", "4")
    assert cells["GPUS_AVAILABLE"] == "1"


async def test_usage_is_exported_summarised_described_and_billed(
    driver: Driver, stack: LocalStack, machine: Path
) -> None:
    busy = [
        {**fake.gpu(i), "util": 73, "memory_used_mib": 2048 * (i + 1), "power_mw": 400_500}
        for i in range(GPUS)
    ]
    fake.machine(machine, busy)
    url = stack.metrics_url("node-0")  # every service's, chosen at `mcli dev up`
    assert url is not None

    async def scraped() -> str:
        async with httpx.AsyncClient() as client:
            text = (await client.get(url)).text
        return text if "} 8192\n" in text else ""  # GPU 3's memory: the busy machine seen

    text = await eventually(scraped, what="the gauges of the busy GPUs", within=30)
    uuid = fake.gpu(3)["uuid"]
    assert f'DCGM_FI_DEV_GPU_UTIL{{gpu="3",UUID="{uuid}",' in text
    assert f'DCGM_FI_DEV_FB_USED{{gpu="3",UUID="{uuid}",' in text
    assert "} 400.5\n" in text

    run_id = await driver.submit(spec("sleep 2", gpus=2, name="busy"), user=USER)  # mcli's
    state = await driver.wait_for(run_id, S.COMPLETED, within=60)
    [rank] = state.latest.ranks
    exits = [r.event async for r in driver.replay() if isinstance(r.event, RankExited)]
    [exit_] = [e for e in exits if e.run_id == run_id]
    assert exit_.gpu_utilization == 73
    assert exit_.gpu_memory_peak_mib == 2048 * (max(rank.gpus) + 1)

    await make_admin(stack)
    mcli = Mcli(env={**os.environ, **client_env(stack)}, stack=stack)

    def described() -> str:
        done = mcli("describe", "run", run_id)  # by id: the driver's submit names no run key
        return done.stdout if "73%" in done.stdout else ""

    shown = await eventually(lambda: asyncio.to_thread(described), what="describe", within=30)
    assert "GPU UTIL" in shown
    assert "PEAK GPU MEM" in shown
    assert all(fake.gpu(g)["uuid"] in shown for g in rank.gpus)

    def billed() -> list[dict[str, object]]:
        lines = json.loads(mcli.ok("billing", "--by", "run", "-o", "json"))["lines"]
        return [line for line in lines if line["run"] == state.name and line["gpu_utilization"]]

    [line] = await eventually(lambda: asyncio.to_thread(billed), what="billing", within=30)
    assert line["gpu_utilization"] == 73
    table = mcli.ok("billing", "--by", "run")
    assert "GPU_UTIL" in table
    assert "73%" in table


async def test_a_failing_health_check_cordons_the_node_with_its_output(tmp_path: Path) -> None:
    sick = tmp_path / "sick"
    command = f"if [ -e {sick} ]; then echo 'fan 2 failed'; exit 1; fi"
    config = StackConfig(
        nodes=1,
        gpus_per_node=2,
        grace_period_s=2.0,
        extra_env={
            "RUNPLANE_HEALTH_CHECK_COMMAND": command,
            "RUNPLANE_HEALTH_CHECK_INTERVAL_S": "0.2",
        },
    )
    with stack_up(tmp_path / "stack", config) as stack:
        async with driving(stack, 1):
            await make_admin(stack)
            mcli = Mcli(env={**os.environ, **client_env(stack)}, stack=stack)
            assert "cordoned" not in mcli.ok("admin", "nodes", "list")
            sick.touch()

            def cordoned() -> str | None:
                listed = mcli.ok("admin", "nodes", "list")
                return listed if "cordoned" in listed else None

            listed = await eventually(cordoned, what="the node to be cordoned", within=30)
            assert "fan 2 failed" in listed
            audit = json.loads(mcli.ok("audit", "-o", "json"))
            [entry] = [e for e in audit if e["action"] == "node.cordoned"]
            assert entry["actor"] == "node-agent@node-0"
            assert "fan 2 failed" in entry["detail"]
