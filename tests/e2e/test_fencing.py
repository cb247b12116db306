"""Fencing on a whole stack (docs/fencing.md): an agent killed (kill -9), hung (SIGSTOP), or
cut off from Valkey alone (with ``fence_on_disconnect``) under a running attempt with
``retry_on_system_failure``; the retry starts on the other node, and the old rank's last sign of
life comes before the retry's first, nothing after the agent wakes. And Valkey down for longer
than the node timeout: every run goes on, no resumption.

Each rank's command appends ``<resumption index> <time>`` to a file every 100 ms."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cli.stack import LocalStack, StackConfig
from events.model import NodeLost
from events.status import RunStatus
from services.node_agent.shim.ondisk import signal_group
from tests.e2e.driver import Driver, driving, spec, stack_up
from tests.integration.dropping_proxy import DroppingProxy
from tests.ranks import open_to_ranks
from tests.waiting import eventually

S = RunStatus
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = 2
TTL_S = 3  # the heartbeat expiry: fence at 1.5 s, SIGKILL 0.6 s later (services.core.timeouts)


ENV = {"RUNPLANE_NODE_TIMEOUT_S": str(TTL_S), "RUNPLANE_HEARTBEAT_TTL_S": str(TTL_S)}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    config = StackConfig(nodes=NODES, gpus_per_node=1, grace_period_s=2.0, extra_env=ENV)
    with stack_up(tmp_path / "stack", config) as local:
        yield local


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    async with driving(stack, NODES, stop_all=True) as drive:
        yield drive


def beating(path: Path) -> str:
    return f'while true; do echo "$RESUMPTION_INDEX $(date +%s.%N)" >> {path}; sleep 0.1; done'


def beats(path: Path) -> dict[int, list[float]]:
    """Each resumption's timestamps, in order."""
    found: dict[int, list[float]] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        index, _, at = line.partition(" ")
        if at:
            found.setdefault(int(index), []).append(float(at))
    return found


async def start_beating(driver: Driver, path: Path) -> tuple[str, str]:
    """A run beating on one node; its id and the service of that node."""
    run_id = await driver.submit(spec(beating(path), retry_on_system_failure=True))
    state = await driver.wait_for(run_id, S.RUNNING)
    await eventually(lambda: len(beats(path).get(0, [])) >= 3, what="the first attempt beating")
    [rank] = state.latest.ranks
    [service] = [name for name in driver.stack.services if driver.stack.node_of(name) == rank.node]
    return run_id, service


async def retried(driver: Driver, run_id: str, path: Path) -> None:
    await driver.wait_for(run_id, S.RUNNING, attempt=1, within=60)
    await eventually(lambda: len(beats(path).get(1, [])) >= 3, what="the retry beating")


async def registered(driver: Driver, node: str) -> int:
    return sum(event.node == node for event in await driver.registrations())


async def test_a_killed_agent_s_rank_is_gone_before_its_retry_starts(
    driver: Driver, stack: LocalStack, tmp_path: Path
) -> None:
    path = open_to_ranks(tmp_path / "out", writable=True) / "beats"
    run_id, service = await start_beating(driver, path)
    stack.kill(service)
    await retried(driver, run_id, path)
    seen = beats(path)
    assert max(seen[0]) < min(seen[1])
    node = stack.node_of(service)
    assert node is not None
    before = await registered(driver, node)
    stack.start(service)
    await eventually(lambda: registered(driver, node), equals=before + 1, what="re-registered")
    await driver.settled(f"agent:{node}")
    assert beats(path)[0] == seen[0]  # the restarted agent revived nothing
    assert (await driver.run(run_id)).latest.index == 1


async def test_a_hung_agent_s_rank_is_gone_before_its_retry_starts_and_stays_gone(
    driver: Driver, stack: LocalStack, tmp_path: Path
) -> None:
    path = open_to_ranks(tmp_path / "out", writable=True) / "beats"
    run_id, service = await start_beating(driver, path)
    pid = stack.records()[service].pid
    assert pid is not None
    node = stack.node_of(service)
    assert node is not None
    before = await registered(driver, node)
    os.kill(pid, signal.SIGSTOP)
    try:
        await retried(driver, run_id, path)
    finally:
        os.kill(pid, signal.SIGCONT)
    seen = beats(path)
    assert max(seen[0]) < min(seen[1])
    # Woken, it learns its node was lost and registers again; it appends nothing stale.
    await eventually(lambda: registered(driver, node), equals=before + 1, what="re-registered")
    await driver.settled(f"agent:{node}")
    assert beats(path)[0] == seen[0]
    state = await driver.run(run_id)
    assert state.latest.index == 1
    [old] = state.attempts[0].ranks
    assert old.reason is not None
    assert old.reason.code == "NodeFailure"  # the scheduler's, not a stale report of the agent


async def test_valkey_down_longer_than_the_node_timeout_stops_no_run(
    driver: Driver, stack: LocalStack, tmp_path: Path
) -> None:
    paths = [open_to_ranks(tmp_path / "out", writable=True) / f"beats-{i}" for i in range(NODES)]
    runs = [await start_beating(driver, path) for path in paths]
    assert len({service for _, service in runs}) == NODES  # one GPU a node: one run on each
    stack.kill("valkey")
    down = [len(beats(path)[0]) for path in paths]
    await asyncio.sleep(TTL_S * 2)  # allowed: the outage itself, not a wait for a condition
    await asyncio.to_thread(stack.start, "valkey")
    for path, count in zip(paths, down, strict=True):
        await eventually(lambda p=path, c=count: len(beats(p)[0]) > c + 20, what="still beating")  # type: ignore[misc]
    for run_id, _ in runs:
        state = await driver.run(run_id)
        assert (state.latest.index, state.status) == (0, S.RUNNING)
    assert all(set(beats(path)) == {0} for path in paths)
    assert not [r async for r in driver.replay() if isinstance(r.event, NodeLost)]


@contextlib.asynccontextmanager
async def proxied_stack(
    tmp_path: Path, **env: str
) -> AsyncIterator[tuple[LocalStack, Driver, dict[str, DroppingProxy]]]:
    """A stack whose nodes each reach Valkey through a proxy of their own (``redis_urls``),
    which the test can cut; the other services reach it directly."""
    async with (
        DroppingProxy("127.0.0.1", 0) as proxy_0,
        DroppingProxy("127.0.0.1", 0) as proxy_1,
    ):
        proxies = {"node-0": proxy_0, "node-1": proxy_1}
        config = StackConfig(
            nodes=NODES,
            gpus_per_node=1,
            grace_period_s=2.0,
            extra_env={**ENV, **env},
            redis_urls={name: proxy.url for name, proxy in proxies.items()},
        )
        with stack_up(tmp_path / "stack", config) as stack:
            for proxy in proxies.values():
                proxy.upstream = ("127.0.0.1", stack.valkey_port)
            async with driving(stack, NODES) as driver:
                try:
                    yield stack, driver, proxies
                finally:
                    for proxy in proxies.values():
                        proxy.heal()
                    await driver.stop_all()


async def test_an_agent_cut_off_alone_fences_its_rank_before_its_retry_starts(
    tmp_path: Path,
) -> None:
    """The node under the run is cut off, the rest of the stack is not: a single-node
    partition, with ``fence_on_disconnect``."""
    async with proxied_stack(tmp_path, RUNPLANE_FENCE_ON_DISCONNECT="true") as (
        stack,
        driver,
        proxies,
    ):
        path = open_to_ranks(tmp_path / "out", writable=True) / "beats"
        run_id, service = await start_beating(driver, path)
        proxies[service].cut()
        await retried(driver, run_id, path)
        seen = beats(path)
        assert max(seen[0]) < min(seen[1])
        node = stack.node_of(service)
        assert node is not None
        before = await registered(driver, node)
        proxies[service].heal()
        await eventually(lambda: registered(driver, node), equals=before + 1, what="re-registered")
        await driver.settled(f"agent:{node}")
        assert beats(path)[0] == seen[0]
        assert (await driver.run(run_id)).latest.index == 1


async def test_every_agent_cut_off_while_the_scheduler_is_not_declares_no_node_lost(
    tmp_path: Path,
) -> None:
    """A silence every node shares, the scheduler still connected (a network fault between
    the nodes and Valkey): no node is declared lost (``silent_share``), no rank fenced (the
    default ``fence_on_disconnect``), every run goes on once the nodes are back."""
    async with proxied_stack(tmp_path) as (_, driver, proxies):
        paths = [
            open_to_ranks(tmp_path / "out", writable=True) / f"beats-{i}" for i in range(NODES)
        ]
        runs = [await start_beating(driver, path) for path in paths]
        for proxy in proxies.values():
            proxy.cut()
        silent_at = time.time()
        await asyncio.sleep(TTL_S * 2)  # allowed: the cut itself, not a wait for a condition
        for proxy in proxies.values():
            proxy.heal()
        for path in paths:  # beating all along: through the cut and after it
            await eventually(lambda p=path: max(beats(p)[0]) > silent_at + TTL_S * 2, what="on")  # type: ignore[misc]
            assert set(beats(path)) == {0}
        for run_id, _ in runs:
            state = await driver.run(run_id)
            assert (state.latest.index, state.status) == (0, S.RUNNING)
        assert not [r async for r in driver.replay() if isinstance(r.event, NodeLost)]


@pytest.fixture
def fencing_stack(tmp_path: Path) -> Iterator[LocalStack]:
    env = {**ENV, "RUNPLANE_FENCE_ON_DISCONNECT": "true"}
    config = StackConfig(nodes=NODES, gpus_per_node=1, grace_period_s=2.0, extra_env=env)
    with stack_up(tmp_path / "stack", config) as local:
        yield local


def command_pgid(stack: LocalStack, service: str, run_id: str) -> int:
    data_dir = Path(stack.services[service].env["RUNPLANE_DATA_DIR"])
    return int((data_dir / "ranks" / run_id / "0" / "0" / "command.pid").read_text())


async def test_with_fence_on_disconnect_a_valkey_outage_fences_every_run_and_retries_it(
    fencing_stack: LocalStack, tmp_path: Path
) -> None:
    """The other side of the trade-off (docs/fencing.md): every rank is fenced during the
    outage, each fenced exit is reported once Valkey is back, and the runs are retried."""
    stack = fencing_stack
    async with driving(stack, NODES) as driver:
        try:
            paths = [
                open_to_ranks(tmp_path / "out", writable=True) / f"beats-{i}" for i in range(NODES)
            ]
            runs = [await start_beating(driver, path) for path in paths]
            groups = [command_pgid(stack, service, run_id) for run_id, service in runs]
            stack.kill("valkey")
            await eventually(
                lambda: not any(signal_group(g, 0) for g in groups), what="every rank fenced"
            )
            fenced = [beats(path)[0] for path in paths]
            await asyncio.to_thread(stack.start, "valkey")
            for (run_id, _), path, before in zip(runs, paths, fenced, strict=True):
                state = await driver.wait_for(run_id, S.RUNNING, attempt=1, within=60)
                [old] = state.attempts[0].ranks
                assert old.reason is not None
                assert (old.reason.category, old.reason.code) == ("system", "NodeFenced")
                assert beats(path)[0] == before
            assert not [r async for r in driver.replay() if isinstance(r.event, NodeLost)]
        finally:
            await driver.stop_all()
