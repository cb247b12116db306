"""Runs at rest leave the projector's memory once their rows are stored, and come back from
those rows when a new event of theirs arrives (a restart, a delete): the rows stored end the
same as a rebuild's from zero, and the folds hold only the runs that move.

The histories come from the simulator (restarts of ended runs, retries, deletes, two-node
attempts, many runs interleaved); the projector is the service's own loop on in-memory IO,
following a log a writer reveals bit by bit, so nearly every event is folded after the start.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec
from events.model import RunSubmitted
from projections.attempts import AttemptsProjection
from projections.base import Evicting
from projections.billing import BillingProjection
from projections.catalog import NAMES, make_all
from projections.run_status import RunStatusProjection
from projections.runner import Entry, Runner
from services.projector.projector import Projector
from tests.unit.projections.fakes import FakeGroup, FakeLog, FakeStore, rebuilt
from tests.unit.projections.simulator import history


async def following(entries: Sequence[Entry], rng: random.Random) -> tuple[FakeStore, Runner]:
    """A projector that follows the log as it grows; its store and its runner at the end."""
    store, log = FakeStore(), FakeLog(entries)
    group = FakeGroup(log)
    projector = Projector(
        store,
        [log],
        [group],
        make_all,
        batch=rng.randint(1, 25),
        page=rng.randint(1, 40),
        commit_every=rng.randint(1, 120),
        rest_ms=rng.choice([0, 0, 50, 2_000]),
    )
    await projector.start()
    while True:
        log.reveal(rng.randint(0, 15))
        read = await projector.step(0)
        if read == 0 and log.complete and not group.pending:
            assert projector.runner is not None
            return store, projector.runner


def check(rng: random.Random, steps: int) -> Runner:
    entries = history(rng, steps, runs=8)
    store, runner = asyncio.run(following(entries, rng))
    rebuild = asyncio.run(rebuilt([entries]))
    for name in NAMES:
        assert store.build(name) == rebuild.build(name), f"projection {name} differs"
    for build in runner.engine.builds if runner.rest_ms == 0 else ():  # what is left moves
        fold = build.projection
        if isinstance(fold, RunStatusProjection):
            assert not [r for r in fold.runs.values() if r.status.is_terminal()]
        if isinstance(fold, AttemptsProjection):
            assert not [a for a in fold.runs.values() if a[-1].status.is_terminal()]
        if isinstance(fold, BillingProjection):  # the runs with an open attempt
            held = {a.run_id for a in fold.attempts.values()}
            assert held == {a.run_id for a in fold.attempts.values() if a.ended_at is None}
            assert all(t.value in held for t in fold.totals.values() if t.dim == "run")
    return runner


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(seed=st.randoms(use_true_random=False), steps=st.integers(50, 400))
def test_a_projector_that_lets_runs_at_rest_go_stores_the_rows_of_a_rebuild(
    seed: random.Random, steps: int
) -> None:
    check(seed, steps)


def test_runs_at_rest_leave_and_come_back() -> None:
    """Over fixed histories: runs did leave, and runs that left did come back."""
    runners = [check(random.Random(seed), 400) for seed in range(12)]
    assert sum(r.evicted for r in runners) > 100
    assert sum(r.restored for r in runners) > 10


def test_the_folds_that_let_runs_go() -> None:
    evicting = {p.name for p in make_all() if isinstance(p, Evicting)}
    assert evicting == {RunStatusProjection.name, AttemptsProjection.name, BillingProjection.name}


def test_the_run_of_an_entry_is_read_from_either_layout_and_never_raises() -> None:
    entries = history(random.Random(3), 60, runs=1)
    fields = next(f for _, f in entries if f[codec.KIND].startswith(b"run.submitted@"))
    flat = [item for pair in fields.items() for item in pair]
    kind = fields[codec.KIND]
    assert kind in codec.kinds_of({RunSubmitted})
    assert codec.run_of(fields) == codec.run_of(flat) == ("run0", kind)
    assert codec.run_of({codec.KIND: kind, codec.BODY: b"{not json"}) == (None, kind)
    node = {codec.KIND: b"node.registered@1", codec.BODY: b'{"node": "n1"}'}
    assert codec.run_of(node)[0] is None
