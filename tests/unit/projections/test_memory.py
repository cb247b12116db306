"""A projector that stops cleanly writes its folds' memory down at their checkpoints, and the
next start takes it up and reads the log from there, not from zero: the rows stored end the
same as a rebuild's from zero. A memory that is not the checkpoint's (a commit since, another
fold) is left alone, and that start folds the log from zero as before.

The histories come from the simulator; the projector is the service's own loop on in-memory
IO, following a log a writer reveals bit by bit, stopped and started again at random, now and
then with one fold's memory lost (that build folds from zero beside the others).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec
from projections.base import Resumable, format_checkpoint, memory_form
from projections.catalog import NAMES, make_all
from projections.runner import Runner
from services.projector.projector import Projector
from tests.unit.projections.fakes import FakeGroup, FakeLog, FakeStore, rebuilt
from tests.unit.projections.simulator import history
from tests.unit.projections.test_eviction import assert_only_moving_runs_held, moving


async def stopped_and_started(
    log: FakeLog, store: FakeStore, rng: random.Random
) -> tuple[Runner, int]:
    """A projector that follows the log as it grows, stopped cleanly now and then and started
    again on the same store; its runner at the end and how many starts took the memory up."""
    group = FakeGroup(log)
    options: dict[str, Any] = {
        "batch": rng.randint(1, 25),
        "page": rng.randint(1, 40),
        "commit_every": rng.randint(1, 120),
        "rest_ms": rng.choice([0, 0, 50, 2_000]),
    }
    projector = Projector(store, [log], [group], make_all, **options)
    await projector.start()
    took_up = 0
    while True:
        log.reveal(rng.randint(0, 15))
        read = await projector.step(0)
        if rng.random() < 0.15:
            await projector.flush()
            await projector.stop()
            checkpoints = {
                format_checkpoint(build.stored) for build in _runner(projector).engine.builds
            }
            if store.memories and rng.random() < 0.3:  # one fold's is lost: that one from zero
                del store.memories[rng.choice(sorted(store.memories))]
            kept = len(store.memories)
            projector = Projector(store, [log], [group], make_all, **options)
            log.reads.clear()
            await projector.start()
            recalled = _runner(projector).recalled
            assert len(recalled) == kept
            if len(recalled) == len(NAMES):
                # It read the log from where the builds stood, never from zero.
                assert log.reads[0] in checkpoints, (log.reads, checkpoints)
            elif recalled:
                assert log.reads[0] == "0-0"  # one build folds from zero, beside the others
            took_up += len(recalled) == len(NAMES)
        if read == 0 and log.complete and not group.pending:
            return _runner(projector), took_up


def _runner(projector: Projector) -> Runner:
    assert projector.runner is not None
    return projector.runner


def check(rng: random.Random, steps: int) -> int:
    entries = history(rng, steps, runs=8)
    store, log = FakeStore(), FakeLog(entries)
    runner, took_up = asyncio.run(stopped_and_started(log, store, rng))
    rebuild = asyncio.run(rebuilt([entries]))
    for name in NAMES:
        assert store.build(name) == rebuild.build(name), f"projection {name} differs"
    if runner.rest_ms == 0:
        events = (codec.recorded(position, fields).event for position, fields in entries)
        assert_only_moving_runs_held(runner, moving(events))
    return took_up


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(seed=st.randoms(use_true_random=False), steps=st.integers(50, 300))
def test_a_projector_started_from_the_memory_it_kept_stores_the_rows_of_a_rebuild(
    seed: random.Random, steps: int
) -> None:
    check(seed, steps)


def test_starts_take_the_memory_up() -> None:
    """Over fixed histories: starts after a clean stop did take the memory up."""
    assert sum(check(random.Random(seed), 300) for seed in range(8)) > 20


def test_every_fold_keeps_its_memory() -> None:
    assert {p.name for p in make_all() if isinstance(p, Resumable)} == set(NAMES)


def test_a_memory_that_is_not_the_checkpoints_is_left_alone() -> None:
    """A commit after the memory was kept moves the checkpoint: the next start folds from
    zero; so does one whose fold's memory changed shape."""
    entries = history(random.Random(3), 200, runs=6)

    async def scenario() -> None:
        store, log = FakeStore(), FakeLog(entries)
        group = FakeGroup(log)
        log.reveal(120)
        first = Projector(store, [log], [group], make_all, batch=10)
        await first.start()
        await first.stop()
        kept = dict(store.memories)
        assert len(kept) == len(NAMES)
        log.reveal(80)  # another projector folds and commits more; then the old memory is back
        second = Projector(store, [log], [group], make_all, batch=10)
        await second.start()
        while await second.step(0):
            pass
        store.memories = kept
        log.reads.clear()
        third = Projector(store, [log], [group], make_all, batch=10)
        await third.start()
        assert _runner(third).recalled == []
        assert log.reads[0] == "0-0"
        assert store.memories == {}  # taken and dropped: it can never be right again

    asyncio.run(scenario())


def test_a_fold_whose_memory_changed_shape_has_another_form() -> None:
    fold = next(p for p in make_all() if isinstance(p, Resumable))
    before = memory_form(fold)
    fold.Memory = msgspec.defstruct("Memory", [("runs", dict[str, int])])  # type: ignore[misc]
    assert memory_form(fold) != before


def test_a_start_from_zero_lets_the_runs_at_rest_go_as_it_folds() -> None:
    """A start with no memory to take up (after a kill -9) folds the log from zero up to its
    checkpoints; a run at rest leaves as soon as its last entry up to them is folded (its rows
    say the rest), not once the whole history is in memory. Its rows stay a rebuild's."""
    entries = history(random.Random(4), 300, runs=8)
    events = [codec.recorded(position, fields).event for position, fields in entries]

    async def scenario() -> Runner:
        store, log = FakeStore(), FakeLog(entries)
        log.reveal(len(entries))
        first = Projector(store, [log], [FakeGroup(log)], make_all, batch=10)
        await first.start()  # the whole log stored; then it dies, keeping nothing
        runner = Runner(store, [log], make_all(), page=7)
        await runner.start(serving=False)  # nothing let go after the catch-up: only during it
        rebuild = await rebuilt([entries])
        for name in NAMES:
            assert store.build(name) == rebuild.build(name), f"projection {name} differs"
        return runner

    runner = asyncio.run(scenario())
    assert runner.evicted > 0
    assert_only_moving_runs_held(runner, moving(events))
