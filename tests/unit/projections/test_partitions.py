"""Folds reach the same rows whatever the interleaving of the log's partitions.

A simulated log (runs, node events, users' refused requests about runs) is split into
partitions as the store splits it (``events.keys.partition_of`` of each event's aggregate);
each partition keeps its order. Folding the partitions one after another is the reference;
any interleaving that keeps each partition's order must store the same rows and checkpoints,
with batches stored at any points, and so must a projector following every partition's
consumer group that crashes anywhere and resumes from its checkpoints.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import keys
from events import model as ev
from events.codec import Recorded
from projections.catalog import NAMES, make_all
from projections.engine import Build, Engine
from projections.errors import OtherPartitions
from projections.reader import Entry
from projections.runner import Runner
from projections.utilization import UtilizationProjection
from tests.unit.projections.fakes import (
    FakeLog,
    FakeStore,
    crashing_projector,
    rebuilt,
)
from tests.unit.projections.history import History
from tests.unit.projections.simulator import USERS, Simulator, encoded

Partitions = list[list[Entry]]
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)


def with_refusals(records: Sequence[Recorded], rng: random.Random) -> list[Recorded]:
    """``records`` with users' refused requests about runs after some of the runs' events
    (user events, on the users' partitions), restamped: one position each, in order."""
    out: list[ev.AnyEvent] = []
    names: dict[str, str] = {}
    for record in records:
        event = record.event
        out.append(event)
        if isinstance(event, ev.RunSubmitted):
            names[event.run_id] = event.name
        if isinstance(event, ev.RunEvent) and rng.random() < 0.08:
            user = rng.choice(USERS)
            out.append(
                ev.RequestRefused(
                    id=f"refused-{len(out)}",
                    actor=user,
                    user=user,
                    request="run.stop",
                    target=names.get(event.run_id, event.run_id),
                    code=403,
                    why="not yours",
                    run_id=event.run_id,
                    time=event.time,
                )
            )
    versions: dict[str, int] = {}
    restamped = []
    for seq, event in enumerate(out):
        versions[event.aggregate] = versions.get(event.aggregate, 0) + 1
        restamped.append(Recorded(f"{event.time}-{seq}", versions[event.aggregate], event))
    return restamped


def partitioned(rng: random.Random, steps: int, partitions: int) -> Partitions:
    records = with_refusals(Simulator(rng, runs=8).play(steps), rng)
    split: Partitions = [[] for _ in range(partitions)]
    for record in records:
        partition = keys.partition_of(record.event.aggregate, partitions)
        split[partition] += encoded([record])
    return split


def interleaving(split: Partitions, rng: random.Random) -> list[tuple[int, Entry]]:
    """Every entry once, each partition's in its order, the partitions mixed at random."""
    left = [list(reversed(entries)) for entries in split]
    mixed = []
    while any(left):
        partition = rng.choice([p for p, entries in enumerate(left) if entries])
        mixed.append((partition, left[partition].pop()))
    return mixed


async def fold(
    mixed: Sequence[tuple[int, Entry]], partitions: int, rng: random.Random
) -> FakeStore:
    """Fold ``mixed`` in its order, storing a batch at random points (and at the end)."""
    store = FakeStore()
    engine = Engine([Build(p, f"v{p.version}") for p in make_all()], partitions)
    for partition, (position, fields) in mixed:
        engine.feed_entry(position, fields, partition)
        if rng.random() < 0.05:
            await commit(store, engine)
    await commit(store, engine)
    return store


async def commit(store: FakeStore, engine: Engine) -> None:
    batch = engine.batch()
    if batch is not None:
        await store.commit(batch)
        engine.committed(batch)


def one_after_another(split: Partitions) -> list[tuple[int, Entry]]:
    return [(p, entry) for p, entries in enumerate(split) for entry in entries]


def assert_same_rows(found: FakeStore, reference: FakeStore) -> None:
    for name in NAMES:
        namespace = f"v{next(p for p in make_all() if p.name == name).version}"
        assert found.build(name, namespace) == reference.build(name, namespace), name


@EXAMPLES
@given(
    seed=st.randoms(use_true_random=False),
    steps=st.integers(50, 400),
    partitions=st.sampled_from([2, 3, 5]),
)
def test_any_interleaving_of_the_partitions_folds_to_the_same_rows(
    seed: random.Random, steps: int, partitions: int
) -> None:
    split = partitioned(seed, steps, partitions)
    reference = asyncio.run(fold(one_after_another(split), partitions, random.Random(0)))
    mixed = interleaving(split, seed)
    assert_same_rows(asyncio.run(fold(mixed, partitions, seed)), reference)


def test_the_partitions_folded_last_to_first_store_the_rows_of_first_to_last() -> None:
    """Runs' partitions ahead of their nodes' registrations, exits after their nodes' losses:
    what made utilization count a node's GPUs from its runs' ranks."""
    split = partitioned(random.Random(3), 300, 3)
    reference = asyncio.run(fold(one_after_another(split), 3, random.Random(0)))
    backwards = [(p, entry) for p in reversed(range(3)) for entry in split[p]]
    assert_same_rows(asyncio.run(fold(backwards, 3, random.Random(0))), reference)


def test_a_restart_folding_past_its_checkpoint_first_stores_what_earlier_entries_change() -> None:
    """A node registered (the nodes' partition) and a run queued (the runs') are stored; then
    the run is placed on the node. A restart reads the runs' partition first: the placement
    (past the checkpoint) is folded before the registration (before it), which only then
    makes the node's instance row count the placement: it must be stored again."""
    history = History()
    history.node("2026-11-24 10:00:00.000", "n1")
    history.submit("2026-11-24 10:00:01.000", "r1", gpus=8, nodes=1)
    history.queue("2026-11-24 10:00:02.000", "r1")
    history.schedule("2026-11-24 10:00:03.000", "r1", nodes=["n1"])
    split: Partitions = [[], []]  # the runs', then the nodes'
    for record in history.records:
        split[0 if isinstance(record.event, ev.RunEvent) else 1] += encoded([record])
    store = FakeStore()
    logs = [FakeLog(entries) for entries in split]
    logs[0].reveal(2)  # submitted, queued
    logs[1].reveal(1)  # registered
    asyncio.run(Runner(store, logs, make_all()).start())
    logs[0].reveal(1)  # placed
    asyncio.run(Runner(store, logs, make_all(), page=3).start())  # the runs' partition first
    assert_same_rows(store, asyncio.run(rebuilt(split)))
    namespace = f"v{UtilizationProjection.version}"
    [instance] = store.hashes[keys.projection_rows("utilization", namespace, "instance")].values()
    assert b'"gpus_used":8' in instance


def test_a_build_of_more_partitions_than_the_log_has_is_refused() -> None:
    split = partitioned(random.Random(5), 100, 3)
    store = asyncio.run(rebuilt(split))
    fewer = [FakeLog(entries) for entries in split[:2]]
    with pytest.raises(OtherPartitions, match="folded 3 partitions and the log has 2"):
        asyncio.run(Runner(store, fewer, make_all()).start())


@EXAMPLES
@given(
    seed=st.randoms(use_true_random=False),
    steps=st.integers(50, 300),
    partitions=st.sampled_from([2, 3]),
    rate=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_a_crashing_projector_over_partitions_ends_with_the_rows_of_a_rebuild(
    seed: random.Random, steps: int, partitions: int, rate: float
) -> None:
    split = partitioned(seed, steps, partitions)
    crashed = asyncio.run(crashing_projector(split, seed, rate))
    rebuild = asyncio.run(rebuilt(split))
    for name in NAMES:
        assert crashed.build(name) == rebuild.build(name), f"projection {name} differs"
