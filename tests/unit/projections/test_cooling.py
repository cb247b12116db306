"""Runs at rest leave the store for the cold rows, and come back whole when the log says more
of them: the store's rows plus the cold runs' rows end as a rebuild's from zero.

The service's own projector loop follows a simulated log bit by bit; now and then it cools a
random choice of runs (``projections.cooling.cool``: only those no fold holds leave), stops
cleanly or is killed (a new projector on the same store, no memory: a catch-up from zero,
which folds the cold runs' history again and must not render them in part).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec, keys
from events.model import RunEvent
from projections.catalog import NAMES, make_all
from projections.cold import Placed, anchors
from projections.cooling import cool
from services.projector.projector import Projector
from tests.unit.projections.fakes import FakeGroup, FakeLog, FakeStore, rebuilt
from tests.unit.projections.simulator import history


async def _followed(entries: list[Any], store: FakeStore, rng: random.Random) -> dict[str, int]:
    log = FakeLog(entries)
    group = FakeGroup(log)
    runs = sorted(
        {
            event.run_id
            for event in (codec.recorded(p, f).event for p, f in entries)
            if isinstance(event, RunEvent)
        }
    )
    options: dict[str, Any] = {
        "batch": rng.randint(1, 25),
        "page": rng.randint(1, 40),
        "rest_ms": rng.choice([0, 0, 50]),
    }
    counts = {"cooled": 0, "warmed": 0, "starts": 0}

    async def write(placed: list[Placed]) -> None:
        # A run's latest copy in a build is the run there (``projections.cold``).
        for name, namespace, run, _ in placed:
            store.cold_rows.pop((name, namespace, run), None)
        for name, namespace, run, row in placed:
            store.cold_rows.setdefault((name, namespace, run), []).append(row)

    projector = Projector(store, [log], [group], make_all, **options)
    await projector.start()
    while True:
        log.reveal(rng.randint(0, 15))
        read = await projector.step(0)
        assert projector.runner is not None
        if rng.random() < 0.3:
            chosen = [run for run in runs if rng.random() < 0.5]
            counts["cooled"] += await cool(projector.runner, store, chosen, write)
        if rng.random() < 0.08:
            await projector.flush()
            counts["warmed"] += projector.runner.warmed
            if rng.random() < 0.5:
                await projector.stop()  # a clean stop; otherwise a kill: no memory kept
            projector = Projector(store, [log], [group], make_all, **options)
            await projector.start()
            counts["starts"] += 1
        if read == 0 and log.complete and not group.pending:
            assert projector.runner is not None
            counts["warmed"] += projector.runner.warmed
            return counts


def _with_cold(store: FakeStore, name: str) -> dict[str, object]:
    """The build readers read, as if each cold run's rows were back in it."""
    namespace = store.strings[keys.projection_active(name)]
    rows_of = keys.projection_rows
    whole = FakeStore()
    whole.strings = dict(store.strings)
    whole.hashes = {k: dict(v) for k, v in store.hashes.items()}
    whole.zsets = {k: dict(v) for k, v in store.zsets.items()}
    for (of, built, run), rows in store.cold_rows.items():
        if (of, built) != (name, namespace) or _warm(store, of, built, run):
            continue  # not this build's, or it came back: Valkey holds it, the copy is stale
        for row in rows:
            assert row.body is not None
            whole.hashes.setdefault(rows_of(of, built, row.kind), {})[row.id] = row.body
            for index, score in row.index:
                zset = whole.zsets.setdefault(keys.projection_index(of, built, index), {})
                zset[row.id] = float(score)
    return whole.build(name)


def _warm(store: FakeStore, name: str, namespace: str, run: str) -> bool:
    """Whether the build holds the run in Valkey: one of its anchors."""
    return any(
        row_id in store.hashes.get(keys.projection_rows(name, namespace, kind), {})
        for kind, row_id in anchors(name, run)
    )


def check(rng: random.Random, steps: int) -> dict[str, int]:
    entries = history(rng, steps, runs=8)
    store = FakeStore()
    counts = asyncio.run(_followed(entries, store, rng))
    rebuild = asyncio.run(rebuilt([entries]))
    for name in NAMES:
        assert _with_cold(store, name) == rebuild.build(name), f"projection {name} differs"
    return counts


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(seed=st.randoms(use_true_random=False), steps=st.integers(50, 300))
def test_cold_runs_and_the_store_together_are_the_rows_of_a_rebuild(
    seed: random.Random, steps: int
) -> None:
    check(seed, steps)


def test_runs_do_leave_the_store() -> None:
    """Over fixed histories: runs did leave (the property above is not vacuous), and some
    came back."""
    counts = [check(random.Random(seed), 300) for seed in range(6)]
    assert sum(c["cooled"] for c in counts) > 10
    assert sum(c["warmed"] for c in counts) > 3
