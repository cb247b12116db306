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
from collections.abc import Iterable, Sequence

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec, lifecycle
from events.model import AnyEvent, AnyRunEvent, RunEvent, RunSubmitted
from projections.attempts import AttemptsProjection
from projections.audit import AuditProjection
from projections.base import Evicting, Row, RowKey
from projections.billing import BillingProjection
from projections.catalog import NAMES, make_all
from projections.reader import Entry
from projections.run_status import RunStatusProjection
from projections.runner import Runner
from projections.utilization import UtilizationProjection
from services.projector.projector import Projector
from tests.unit.projections.fakes import FakeGroup, FakeLog, FakeStore, rebuilt
from tests.unit.projections.history import USER, History, at, fold
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


def moving(events: Iterable[AnyEvent]) -> set[str]:
    """The runs whose latest attempt has not ended, by the lifecycle rules (which may change
    the specs of ``events``: give them events no one reads again)."""
    by_run: dict[str, list[AnyRunEvent]] = {}
    for event in events:
        if isinstance(event, RunEvent):
            by_run.setdefault(event.run_id, []).append(event)
    states = [lifecycle.fold(run_events) for run_events in by_run.values()]
    return {s.run_id for s in states if s is not None and not s.latest.status.is_terminal()}


def check(rng: random.Random, steps: int) -> Runner:
    entries = history(rng, steps, runs=8)
    store, runner = asyncio.run(following(entries, rng))
    rebuild = asyncio.run(rebuilt([entries]))
    for name in NAMES:
        assert store.build(name) == rebuild.build(name), f"projection {name} differs"
    if runner.rest_ms == 0:
        events = (codec.recorded(position, fields).event for position, fields in entries)
        assert_only_moving_runs_held(runner, moving(events))
    return runner


def assert_only_moving_runs_held(runner: Runner, moving: set[str]) -> None:
    """What every fold holds of runs, once every run at rest had time to go: the moving ones."""
    for build in runner.engine.builds:
        fold = build.projection
        if isinstance(fold, RunStatusProjection):
            assert not [r for r in fold.runs.values() if r.status.is_terminal()]
            assert set(fold.runs) <= moving
        if isinstance(fold, AttemptsProjection):
            assert not [a for a in fold.runs.values() if a[-1].status.is_terminal()]
            assert set(fold.runs) <= moving
        if isinstance(fold, BillingProjection):  # the runs with an open attempt
            held = {a.run_id for a in fold.attempts.values()}
            assert held == {a.run_id for a in fold.attempts.values() if a.ended_at is None}
            assert all(t.value in held for t in fold.totals.values() if t.dim == "run")
            assert set(fold.runs) <= moving
        if isinstance(fold, UtilizationProjection):
            assert not [r for r in fold.runs.values() if r.phase == "done"]
            assert set(fold.runs) <= moving
            on_nodes = {run_id for ranks in fold.held_on.values() for run_id, _ in ranks}
            assert on_nodes <= {r for r, run in fold.runs.items() if run.phase == "active"}
        if isinstance(fold, AuditProjection):  # nodes' and users' trails stay
            runs = {owner for owner in fold.counts if not owner.startswith(("node:", "user:"))}
            assert runs <= moving
            assert set(fold.names) <= runs


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
    assert evicting == set(NAMES)


def stored(rows: Iterable[Row]) -> dict[RowKey, bytes | None]:
    return {(row.kind, row.id): row.body for row in rows}


def decoded(body: bytes | None) -> object:
    assert body is not None
    return msgspec.json.decode(body)


def test_utilization_keeps_a_done_row_while_the_latest_attempt_has_ended() -> None:
    """Written at the end, again on an update, gone on a retry or restart; a run taken back
    from it renders the rows it would have rendered had it stayed."""
    h = History()
    h.node("2026-11-24 09:00:00", "n1")
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1, priority="low", max_retries=1)
    h.queue("2026-11-24 10:00:01", "r1")
    h.schedule("2026-11-24 10:01:00", "r1", nodes=("n1",), gpus=8)
    h.start("2026-11-24 10:02:00", "r1")
    h.finish("2026-11-24 11:00:00", "r1", fail=True, end="2026-11-24 11:00:05")
    h.retry("2026-11-24 11:00:06", "r1", 1)
    h.queue("2026-11-24 11:00:07", "r1", 1, reason="Insufficient resources")
    h.stop_waiting("2026-11-24 11:30:00", "r1", 1)
    stayed, left = UtilizationProjection(), UtilizationProjection()
    rows = stored(fold(stayed, h.records))
    assert stored(fold(left, h.records)) == rows
    assert decoded(rows["done", "r1"]) == [
        "r1-abcdef", USER, "c1", 8, "low", False, at("2026-11-24 10:00:00"),
        at("2026-11-24 11:00:06"), "Insufficient resources", 8, 1, False,
    ]  # fmt: skip
    assert left.evict_resting(at("2026-11-24 11:30:00"), 10) == 1
    assert not left.holds("r1")
    assert not [held for held in left.held_on.values() if held]  # it held nothing
    assert left.restoring("r1", {}) == [("done", "r1")]
    assert left.restoring("r1", rows) == []
    left.restore("r1", rows)
    assert left.runs == stayed.runs
    h.update("2026-11-24 12:00:00", "r1", priority="auto")
    h.restart("2026-11-24 12:30:00", "r1", 2)
    h.queue("2026-11-24 12:30:01", "r1", 2)
    updated, restarted, queued = ([record] for record in h.records[-3:])
    rows = stored(fold(left, updated))
    assert rows == stored(fold(stayed, updated))
    assert decoded(rows["done", "r1"]) == [
        "r1-abcdef", USER, "c1", 8, "auto", False, at("2026-11-24 10:00:00"),
        at("2026-11-24 11:00:06"), "Insufficient resources", 8, 1, False,
    ]  # fmt: skip
    rows = stored(fold(left, restarted))
    assert rows == stored(fold(stayed, restarted))
    assert rows["done", "r1"] is None
    assert stored(fold(left, queued)) == stored(fold(stayed, queued))


def test_billing_lets_a_run_go_whole_and_takes_it_back_from_its_run_row() -> None:
    """Who ran it and its name come back from the ``run`` row: a run that never held GPUs (its
    attempt stopped while waiting) bills its next attempt to the same user, as if it had
    stayed; one that did comes back with its attempts and its totals."""
    h = History()
    h.node("2026-11-24 09:00:00", "n1")
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r1")
    h.stop_waiting("2026-11-24 10:05:00", "r1")
    h.submit("2026-11-24 10:00:00", "r2", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r2")
    h.schedule("2026-11-24 10:01:00", "r2", nodes=("n1",), gpus=8)
    h.start("2026-11-24 10:02:00", "r2")
    h.finish("2026-11-24 11:00:00", "r2", end="2026-11-24 11:00:05")
    stayed, left = BillingProjection(), BillingProjection()
    rows = stored(fold(stayed, h.records))
    assert stored(fold(left, h.records)) == rows
    assert left.evict_resting(at("2026-11-24 12:00:00"), 10) == 2
    assert left.runs == {}
    assert left.attempts == {}
    for run in ("r1", "r2"):
        found: dict[RowKey, bytes | None] = {}
        while wanted := left.restoring(run, found):
            found.update((key, rows.get(key)) for key in wanted)
        left.restore(run, found)
    assert left.runs == stayed.runs
    assert left.attempts == stayed.attempts
    h.restart("2026-11-24 12:30:00", "r1", 1)
    h.queue("2026-11-24 12:30:01", "r1", 1)
    h.schedule("2026-11-24 12:31:00", "r1", 1, nodes=("n1",), gpus=8)
    later = h.records[-3:]
    assert stored(fold(left, later)) == stored(fold(stayed, later))
    assert left.attempts["r1:1"].user == USER
    assert left.restoring("never", {}) == [("run", "never")]
    assert left.restoring("never", {("run", "never"): None}) == []


def test_utilization_keeps_a_deleted_runs_done_row_and_lets_it_go() -> None:
    """A deleted run never comes back (the rules): its ``done`` row stays, marked deleted
    (every run at rest has one: the cold rows' anchor), whether the fold held it or took it
    back to fold the deletion; it leaves memory as a run at rest does, and comes back deleted,
    taking nothing more."""
    h = History()
    h.node("2026-11-24 09:00:00", "n1")
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r1")
    h.schedule("2026-11-24 10:01:00", "r1", nodes=("n1",), gpus=8)
    h.start("2026-11-24 10:02:00", "r1")
    h.finish("2026-11-24 11:00:00", "r1", end="2026-11-24 11:00:05")
    stayed, left = UtilizationProjection(), UtilizationProjection()
    rows = stored(fold(stayed, h.records))
    assert stored(fold(left, h.records)) == rows
    assert rows["done", "r1"] is not None
    assert left.evict_resting(at("2026-11-24 12:00:00"), 10) == 1
    left.restore("r1", rows)
    h.delete("2026-11-24 12:00:00", "r1")
    deleted = h.records[-2:]
    rows = stored(fold(left, deleted))
    assert rows == stored(fold(stayed, deleted))
    assert rows["done", "r1"] is not None
    assert rows["done", "r1"].endswith(b",true]")  # deleted
    assert left.evict_resting(at("2026-11-25 12:00:00"), 10) == 1
    assert not left.holds("r1")
    left.restore("r1", rows)  # what the runner does for a later event: it comes back deleted
    assert left.runs == stayed.runs


def test_audit_takes_a_run_back_from_its_numbered_entries() -> None:
    """Its count and its name, from its entries read 16 at a time until one is missing."""
    h = History()
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1)
    for i in range(8):  # 1 + 8 x 4 entries: three rounds of reads
        h.queue(f"2026-11-24 10:{i:02d}:01", "r1", i)
        h.stop_waiting(f"2026-11-24 10:{i:02d}:02", "r1", i)
        h.restart(f"2026-11-24 10:{i:02d}:03", "r1", i + 1)
    h.stop_waiting("2026-11-24 11:00:00", "r1", 8)
    stayed, left = AuditProjection(), AuditProjection()
    rows = stored(fold(stayed, h.records))
    assert stored(fold(left, h.records)) == rows
    assert left.evict_resting(at("2026-11-24 11:00:00"), 10) == 1
    assert not left.holds("r1")
    assert "r1" not in left.names
    found: dict[RowKey, bytes | None] = {}
    rounds = 0
    while wanted := left.restoring("r1", found):
        assert len(wanted) == 16
        found |= {key: rows.get(key) for key in wanted}
        rounds += 1
    assert rounds == 3
    left.restore("r1", found)
    assert (left.counts, left.names) == (stayed.counts, stayed.names)
    assert (left.counts, left.names) == ({"r1": 35}, {"r1": "r1-abcdef"})
    h.delete("2026-11-24 12:00:00", "r1")
    assert stored(fold(left, h.records[-2:])) == stored(fold(stayed, h.records[-2:]))


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
