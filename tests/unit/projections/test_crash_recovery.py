"""A projector that crashes anywhere and resumes from its checkpoints ends with the rows of a
rebuild from zero; without the duplicate guard it does not.

The histories come from the simulator (only what the lifecycle rules accept, many runs
interleaved, restarts, retries, stops, failures, two-node attempts, deletes, node losses). A
writer reveals the log bit by bit while the projector (the service's own loop, on in-memory IO)
reads its consumer group in batches of random size; it dies at random points: inside catch-up,
before a transaction, after it but before the acknowledgement. Each death throws its memory
away; a new projector starts from the stored checkpoints, and the group redelivers whatever was
not acknowledged.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from projections import engine
from projections.catalog import NAMES, make_all
from services.projector.projector import Projector
from tests.unit.projections.fakes import (
    Chaos,
    Crash,
    FakeGroup,
    FakeLog,
    FakeStore,
    crashing_projector,
    rebuilt,
)
from tests.unit.projections.simulator import history


def assert_same_rows(crashed: FakeStore, rebuild: FakeStore) -> None:
    for name in NAMES:
        assert crashed.build(name) == rebuild.build(name), f"projection {name} differs"


def check(rng: random.Random, steps: int, rate: float) -> Chaos:
    entries = history(rng, steps, runs=8)
    crashed = asyncio.run(crashing_projector([entries], rng, rate))
    assert crashed.chaos is not None
    assert_same_rows(crashed, asyncio.run(rebuilt([entries])))
    return crashed.chaos


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(
    seed=st.randoms(use_true_random=False),
    steps=st.integers(50, 400),
    rate=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_a_crashing_projector_ends_with_the_rows_of_a_rebuild(
    seed: random.Random, steps: int, rate: float
) -> None:
    check(seed, steps, rate)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="the guard is what prevents this")
@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
        HealthCheck.too_slow,
    ],
)
@given(seed=st.randoms(use_true_random=False), steps=st.integers(200, 400))
def test_without_the_duplicate_guard_redelivered_events_are_folded_twice(
    seed: random.Random, steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "is_new", lambda position, applied: True)
    check(seed, steps, 0.2)


def test_without_the_duplicate_guard_a_crash_before_the_ack_double_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One crash between the transaction and the acknowledgement, nothing else."""
    raw = history(random.Random(7), 200, runs=4)

    async def scenario() -> FakeStore:
        store, log = FakeStore(), FakeLog(raw)
        group = FakeGroup(log)
        log.reveal(len(raw) // 3)
        first = Projector(store, log, group, make_all, batch=len(raw))
        await first.start()
        log.reveal(len(raw) // 3)

        async def dies(positions: object) -> None:
            raise Crash("before the acknowledgement")

        group.ack = dies  # type: ignore[method-assign]
        await first.step(0)  # stored; the acknowledgement goes out on its own
        with pytest.raises(Crash):
            await first.flush()
        del group.ack  # the next process acknowledges normally
        second = Projector(store, log, group, make_all, batch=len(raw))
        await second.start()  # redelivers what the first one stored and did not acknowledge
        log.reveal(len(raw))
        await second.step(0)
        return store

    rebuild = asyncio.run(rebuilt([raw]))
    assert_same_rows(asyncio.run(scenario()), rebuild)  # with the guard: same rows
    monkeypatch.setattr(engine, "is_new", lambda position, applied: True)
    with pytest.raises(AssertionError, match="differs"):
        assert_same_rows(asyncio.run(scenario()), rebuild)
