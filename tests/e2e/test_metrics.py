"""Every service's Prometheus metrics, scraped over HTTP during a workload on a real local stack
and read with prometheus-client's own parser, agree with the log and the runs' states.

The workload: three runs of ``true`` (placed, completed), one ``sleep`` holding a GPU, and one
run that needs both of the node's GPUs, so it waits (QUEUED) behind the sleeper. The API gets a
request it answers and one with a wrong key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.stack import LocalStack, StackConfig
from cli.stackkey import read_key
from events.codec import Recorded
from events.model import AttemptScheduled, tag_of
from events.status import RunStatus
from projections.catalog import NAMES
from services.core.store import APPENDED
from tests.e2e.driver import Driver, driving, spec, stack_up
from tests.e2e.mcli_helpers import make_admin
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

S = RunStatus
SERVICES = ("scheduler", "projector", "log-collector", "api", "node-0")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    config = StackConfig(nodes=1, gpus_per_node=2, grace_period_s=2.0)
    with stack_up(tmp_path / "stack", config) as local:
        yield local


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    async with driving(stack, 1, stop_all=True) as drive:
        yield drive


async def scrape(stack: LocalStack, name: str) -> Samples:
    """Service ``name``'s samples: (sample name, labels) -> value."""
    url = stack.metrics_url(name)
    assert url is not None, f"{name} serves no metrics"
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
    answer.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def by_label(samples: Samples, name: str, label: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (sample, labels), value in samples.items():
        if sample == name:
            counts[dict(labels)[label]] += int(value)
    return counts


async def log_of(driver: Driver) -> list[Recorded]:
    return [record async for record in driver.replay()]


async def test_every_service_s_metrics_agree_with_the_log_and_the_runs(
    driver: Driver, stack: LocalStack
) -> None:
    quick = [await driver.submit(spec("true", name=f"quick{n}")) for n in range(3)]
    for run_id in quick:
        await driver.wait_for(run_id, S.COMPLETED)
    sleeper = await driver.submit(spec("sleep 600", name="sleeper"))
    await driver.wait_for(sleeper, S.RUNNING)
    both = await driver.submit(spec("true", gpus=2, name="both"))
    waiting = await driver.wait_for(both, S.QUEUED)

    await make_admin(stack)
    async with httpx.AsyncClient() as client:
        whoami = {"query": "{ whoami { name } }"}
        key = read_key(stack.state_dir)
        assert key is not None
        answered = await client.post(stack.api_url, json=whoami, headers={"Authorization": key})
        assert answered.status_code == 200, answered.text
        refused = await client.post(stack.api_url, json=whoami, headers={"Authorization": "no"})
        assert refused.status_code == 401

    # The scheduler: one placement per attempt.scheduled on the log, each with its wait; the
    # one run QUEUED counted under its cluster, priority and reason; the sleeper's GPU held.
    placed = len(await driver.placements())
    assert placed == 4

    async def scheduler() -> Samples | None:
        samples = await scrape(stack, "scheduler")
        done = total(samples, "runplane_placements_total") == placed and total(
            samples, "runplane_pending_runs"
        )
        return samples if done else None

    samples = await eventually(scheduler, what="the scheduler's counters to catch up")
    assert total(samples, "runplane_admission_wait_seconds_count") == placed
    assert total(samples, "runplane_admission_wait_seconds_sum") >= 0
    reason = waiting.latest.queue_reason.partition(":")[0]
    assert reason == "Insufficient resources", waiting.latest.queue_reason
    pending = {"cluster": "local", "priority": "auto", "reason": reason}
    assert total(samples, "runplane_pending_runs", **pending) == 1
    assert total(samples, "runplane_pending_runs") == 1  # the runs QUEUED: that one alone
    gpus = by_label(samples, "runplane_gpus", "state")
    assert gpus == Counter(held=1, free=1, failed=0), gpus
    assert total(samples, "runplane_gpus", cluster="local", gpu_type="a100_80gb") == 2
    assert total(samples, "runplane_evicted_attempts_total") == 0

    # Its consumer group has caught up with the log: nothing undelivered or unacknowledged.
    async def caught_up() -> bool:
        lags = by_label(await scrape(stack, "scheduler"), "runplane_consumer_lag_events", "group")
        return "scheduler" in lags and lags["scheduler"] == 0

    await eventually(caught_up, what="the scheduler's group to catch up")
    lags = by_label(await scrape(stack, "projector"), "runplane_consumer_lag_events", "group")
    assert list(lags) == ["projector"], lags  # each process its own groups

    # Every projection has folded the log up to its newest entry, in log time.
    async def projected() -> bool:
        samples = await scrape(stack, "projector")
        lag = "runplane_projection_lag_seconds"
        named = {dict(labels)["projection"] for (n, labels) in samples if n == lag}
        return named == set(NAMES) and total(samples, lag) == 0

    await eventually(projected, what="every projection to catch up with the log")

    # The API: the request answered and the one refused, each timed.
    api = await scrape(stack, "api")
    assert total(api, "runplane_api_requests_total", operation="whoami", outcome="ok") >= 1
    unknown = {"operation": "unknown", "outcome": "client_error"}
    assert total(api, "runplane_api_requests_total", **unknown) >= 1
    assert total(api, "runplane_api_request_duration_seconds_count") == total(
        api, "runplane_api_requests_total"
    )

    # The log: every event on it was counted by the process that appended it (the services
    # scraped here; this test's own driver counted its submissions in this process).
    recorded = Counter(tag_of(type(r.event)) for r in await log_of(driver))
    appended: Counter[str] = Counter()
    for name in SERVICES:
        scraped = samples if name == "scheduler" else await scrape(stack, name)
        assert total(scraped, "process_start_time_seconds") > 0, name  # the process's own
        appended += by_label(scraped, "runplane_events_appended_total", "type")
    for (name, labels), value in _local().items():
        if name == "runplane_events_appended_total":
            appended[dict(labels)["type"]] += int(value)
    short = {tag: (n, appended[tag]) for tag, n in recorded.items() if appended[tag] < n}
    assert not short, f"events on the log (count, counted): {short}"
    scheduled = by_label(samples, "runplane_events_appended_total", "type")
    assert scheduled[tag_of(AttemptScheduled)] == placed


def _local() -> Samples:
    """This process's ``runplane_events_appended_total`` samples."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in APPENDED.collect()
        for sample in family.samples
    }
