"""kill -9 of any service, or of the server, in the middle of runs: every run still ends in
the right state, no GPU is double-booked, no acknowledged output line is lost (issue 3). On a
Valkey Cluster, kill -9 of the primary holding the log: its replica takes over, no
acknowledged event is lost, billing is what the log says (issue 15)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.crc import key_slot

from cli.stack import LocalStack
from events import keys
from events.model import run_aggregate
from events.status import RunStatus
from events.usage import gpu_ms
from projections import query
from services.output import reading
from tests.e2e.driver import Driver, gpu_overlaps, spec
from tests.e2e.test_lifecycle import span
from tests.waiting import eventually

S = RunStatus
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMMAND = "for i in $(seq 1 20); do echo line $i; done; sleep 2; echo done"


async def _burst(driver: Driver, n: int) -> list[str]:
    # A node-agent down longer than the fence timeout (1.5 s here: a slow restart on a busy
    # machine) has its ranks fenced, a system failure: such a run is retried and still ends
    # COMPLETED, with the whole output of its last attempt.
    runs = (spec(COMMAND, retry_on_system_failure=True) for _ in range(n))
    return list(await asyncio.gather(*(driver.submit(run) for run in runs)))


async def _check_all_completed(
    driver: Driver, stack: LocalStack, run_ids: list[str], *, resent_ok: bool = False
) -> None:
    states = [
        await driver.wait_for(run_id, S.COMPLETED, S.FAILED, S.STOPPED, within=120)
        for run_id in run_ids
    ]
    assert [s.status for s in states] == [S.COMPLETED] * len(states), [
        (s.name, s.latest.reason) for s in states if s.status is not S.COMPLETED
    ]
    spans = {f"{s.run_id}/{a.index}": span(a) for s in states for a in s.attempts}
    assert gpu_overlaps(await driver.placements(), spans) == []
    archive = stack.state_dir / "archive"
    for state in states:
        lines = await _lines(driver, archive, state.run_id, state.latest.index)
        if resent_ok:
            # A batch whose replies died with the server is sent again after the restart: no
            # line is lost, but one the server had stored may be stored twice (at least once).
            lines = list(dict.fromkeys(lines))
        assert lines == [f"line {i}" for i in range(1, 21)] + ["done"], state.name


async def _lines(driver: Driver, archive: Path, run_id: str, attempt: int) -> list[str]:
    async def complete() -> list[str] | None:
        lines = await reading.read_lines(driver.store.redis, archive, run_id, attempt, 0)
        texts = [line.text for line in lines]
        return texts if texts and texts[-1] == "done" else None

    result: list[str] = await eventually(complete, what=f"the whole output of {run_id[:6]}")
    return result


@pytest.mark.parametrize("service", ["scheduler", "node-0", "log-collector"])
async def test_kill_9_of_a_service_mid_burst(
    driver: Driver, stack: LocalStack, service: str
) -> None:
    run_ids = await _burst(driver, 16)
    await driver.wait_for(run_ids[0], S.RUNNING, S.TERMINATING, S.COMPLETED)
    stack.kill(service)
    run_ids += await _burst(driver, 8)  # submitted while it is down
    stack.start(service)
    await _check_all_completed(driver, stack, run_ids)


async def test_kill_9_of_the_server_mid_burst(driver: Driver, stack: LocalStack) -> None:
    run_ids = await _burst(driver, 16)
    await driver.wait_for(run_ids[0], S.RUNNING, S.TERMINATING, S.COMPLETED)
    stack.kill("valkey")
    await asyncio.to_thread(stack.start, "valkey")
    run_ids += await _burst(driver, 8)
    await _check_all_completed(driver, stack, run_ids, resent_ok=True)
    # Every line was acknowledged in the end: none refused, none given up on (the lines the
    # server did not acknowledge before it died were sent again, once, after its restart).
    shim_logs = list(stack.state_dir.glob("nodes/*/ranks/**/shim.log"))
    assert len(shim_logs) >= len(run_ids)
    complaints = [
        line
        for log in shim_logs
        for line in log.read_text(errors="replace").splitlines()
        if '"shim.output_refused"' in line or '"shim.output_lost"' in line
    ]
    assert complaints == []


@pytest.mark.parametrize("stack", ["cluster"], indirect=True)
async def test_kill_9_of_the_logs_primary_mid_burst_fails_over_and_loses_nothing(
    driver: Driver, stack: LocalStack
) -> None:
    cluster = stack.valkey_cluster()
    assert cluster is not None
    log_slot = key_slot(keys.log_stream(0).encode())  # partition 0's: the scheduler's lease
    shard = next(
        s.shard
        for s in cluster.status()
        if s.role == "primary" and any(lo <= log_slot <= hi for lo, hi in s.slots)
    )
    assert shard is not None
    run_ids = await _burst(driver, 16)
    await driver.wait_for(run_ids[0], S.RUNNING, S.TERMINATING, S.COMPLETED)
    acknowledged = await _whole_log(driver)

    primary = cluster.primary(shard)
    stack.kill(stack.servers[primary])
    # Submitted while the replica takes over: each append waits for the cluster, and for a
    # replica of the new primary (the old one, started again, rejoins as that replica).
    later = asyncio.create_task(_burst(driver, 8))
    await asyncio.to_thread(cluster.wait_failed_over, shard, primary)
    await asyncio.to_thread(stack.start, stack.servers[primary])
    run_ids += await later

    await _check_all_completed(driver, stack, run_ids, resent_ok=True)
    log = await _whole_log(driver)
    assert acknowledged - log == set()
    partitions = driver.store.settings.partitions
    for run_id in run_ids:  # each run's history is in its partition's log, entry for entry
        aggregate = run_aggregate(run_id)
        partition = keys.partition_of(aggregate, partitions)
        history = await driver.store.history(aggregate)
        assert [r.position for r in history if (partition, r.position) not in log] == []
    await _billing_is_the_logs(driver, run_ids)


async def _whole_log(driver: Driver) -> set[tuple[int, str]]:
    """Every entry of the log, as (partition, position)."""
    store = driver.store
    return {
        (partition, record.position)
        for partition in range(store.settings.partitions)
        async for record in store.replay(partition)
    }


async def _billing_is_the_logs(driver: Driver, run_ids: list[str]) -> None:
    """The billing projection's GPU-ms per run equal the attempts' spans in the runs' own
    histories (``events.usage.gpu_ms``): nothing lost, nothing counted twice."""
    states = [await driver.run(run_id) for run_id in run_ids]
    expected = {
        s.run_id: sum(gpu_ms(a.gpus, *span(a)) for a in s.attempts if a.status.is_terminal())
        for s in states
    }

    async def billed() -> dict[str, int] | None:
        totals = await query.billing_totals(driver.store.redis, "run")
        found = {run_id: totals.get(run_id, 0) for run_id in run_ids}
        return found if found == expected else None

    await eventually(billed, what="the billing projection to bill every attempt")
