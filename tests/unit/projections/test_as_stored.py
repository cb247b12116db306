"""Each fold says a run's rows as the store holds them, once it let the run go (``as_stored``):
exactly the run's own rows, bodies byte for byte, and its memberships with their scores; no
row of two runs; and taking them out of the store and writing them back leaves it as it was.

What a run owns is written here from the store's layout, not from the folds: the histories
are the simulator's with users' refused requests about runs among them (audit keeps those in
the store, apart from the run's trail), folded by the projector on in-memory IO.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Iterable, Sequence

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import keys
from events import model as ev
from events.codec import Recorded
from events.spec import Compute, RunSpec
from projections.attempts import AttemptsProjection
from projections.audit import AuditProjection
from projections.base import Evicting, Row, RowKey
from projections.billing import BillingProjection
from projections.engine import Batch, Part
from projections.reader import Entry
from projections.run_status import RunStatusProjection
from projections.utilization import UtilizationProjection
from tests.unit.projections.fakes import FakeStore
from tests.unit.projections.history import SCHEDULER, USER, History, at, fold
from tests.unit.projections.simulator import Simulator, encoded
from tests.unit.projections.test_eviction import following
from tests.unit.projections.test_partitions import with_refusals

#: (index, member) -> score
Members = dict[tuple[str, str], float]


def owns(name: str, run_id: str, kind: str, row_id: str, body: bytes) -> bool:
    """Whether a stored row is the run's own, by the layout of fold ``name``."""
    if name == "run_status":
        return (kind == "run" and row_id == run_id) or (
            kind == "name" and msgspec.json.decode(body) == run_id
        )
    if name == "attempts":
        return kind == "attempt" and row_id.rpartition(":")[0] == run_id
    if name == "audit":  # its numbered entries, not the refusals about it (``run!<event>``)
        return kind == "entry" and row_id.rpartition("#")[0] == run_id
    if name == "billing":
        return (
            (kind == "run" and row_id == run_id)
            or (kind == "attempt" and row_id.rpartition(":")[0] == run_id)
            or (kind == "total" and row_id.split("|")[:2] == ["run", run_id])
        )
    assert name == "utilization"
    return kind in ("done", "queued", "active") and row_id == run_id


def stored_rows(store: FakeStore, name: str, namespace: str) -> dict[RowKey, bytes]:
    prefix = keys.projection_rows(name, namespace, "")
    return {
        (key.removeprefix(prefix), row_id): body
        for key, table in store.hashes.items()
        if key.startswith(prefix)
        for row_id, body in table.items()
    }


def stored_members(store: FakeStore, name: str, namespace: str) -> Members:
    prefix = keys.projection_index(name, namespace, "")
    return {
        (key.removeprefix(prefix), member): score
        for key, zset in store.zsets.items()
        if key.startswith(prefix)
        for member, score in zset.items()
    }


def own(
    store: FakeStore, name: str, namespace: str, run_id: str
) -> tuple[dict[RowKey, bytes], Members]:
    """The run's rows in the store, and every membership of those rows."""
    rows = {
        key: body
        for key, body in stored_rows(store, name, namespace).items()
        if owns(name, run_id, *key, body)
    }
    ids = {row_id for _, row_id in rows}
    members = stored_members(store, name, namespace)
    return rows, {(index, member): s for (index, member), s in members.items() if member in ids}


def claimed(rows: Sequence[Row]) -> tuple[dict[RowKey, bytes | None], Members]:
    """What rows returned by ``as_stored`` say is stored: each once, none with ``unindex``."""
    bodies = {(row.kind, row.id): row.body for row in rows}
    assert len(bodies) == len(rows), "a row twice"
    assert all(not row.unindex for row in rows)
    members = {(index, row.id): float(score) for row in rows for index, score in row.index}
    assert len(members) == sum(len(row.index) for row in rows), "a membership twice"
    return bodies, members


def as_stored(
    fold: Evicting, run_id: str, store: FakeStore, name: str, namespace: str
) -> list[Row]:
    """As the caller drives it: ``restoring`` first, then ``as_stored`` until it reads no more,
    each read from the store."""
    found: dict[RowKey, bytes | None] = {}

    def read(wanted: Iterable[RowKey]) -> None:
        for kind, row_id in wanted:
            table = store.hashes.get(keys.projection_rows(name, namespace, kind), {})
            found[kind, row_id] = table.get(row_id)

    while wanted := fold.restoring(run_id, found):
        read(wanted)
    for _ in range(100):
        wanted, rows = fold.as_stored(run_id, found)
        if not wanted:
            return rows
        assert not rows
        read(wanted)
    raise AssertionError("as_stored reads on and on")


def write_back(store: FakeStore, parts: Iterable[tuple[str, str, Sequence[Row]]]) -> None:
    """Store rows as a commit does, the checkpoints as they are."""
    batch = []
    for name, namespace, rows in parts:
        checkpoint = store.strings.get(keys.projection_checkpoint(name, namespace), "0-0")
        active = store.strings.get(keys.projection_active(name), "")
        batch.append(Part(name, namespace, checkpoint, checkpoint, active, False, tuple(rows)))
    asyncio.run(store.commit(Batch(tuple(batch))))


def take_out(store: FakeStore, name: str, namespace: str, rows: Iterable[Row]) -> None:
    """Delete the rows and their memberships (each must be there)."""
    for row in rows:
        del store.hashes[keys.projection_rows(name, namespace, row.kind)][row.id]
        for index, _ in row.index:
            del store.zsets[keys.projection_index(name, namespace, index)][row.id]


def with_parents(records: list[Recorded], rng: random.Random) -> list[Recorded]:
    """Some runs submitted from an earlier one (their ``parent``: its name)."""
    names: list[str] = []
    for record in records:
        if isinstance(event := record.event, ev.RunSubmitted):
            if names and rng.random() < 0.4:
                event.parent = rng.choice(names)
            names.append(event.name)
    return records


def check(rng: random.Random, steps: int) -> int:
    """The three properties over one history; how many (fold, run) were checked."""
    records = with_refusals(with_parents(Simulator(rng, runs=8).play(steps), rng), rng)
    entries: Sequence[Entry] = encoded(records)
    store, runner = asyncio.run(following(entries, rng))
    asyncio.run(runner.commit())
    runs = sorted({r.event.run_id for r in records if isinstance(r.event, ev.RunSubmitted)})
    before = copy.deepcopy(store.hashes), copy.deepcopy(store.zsets)
    parts = []
    checked = 0
    for build in runner.engine.stored_all():
        fold, name, namespace = build.projection, build.name, build.namespace
        assert isinstance(fold, Evicting)
        for run_id in runs:
            fold.let_go(run_id)
        away = [run_id for run_id in runs if not fold.holds(run_id)]
        if name == "billing":  # the store alone says it: runs still placed too (open attempts)
            away = runs
        assert as_stored(fold, "never", store, name, namespace) == []
        every: list[Row] = []
        all_members: Members = {}
        for run_id in away:
            reader = fold if not fold.holds(run_id) else BillingProjection()
            rows = as_stored(reader, run_id, store, name, namespace)
            bodies, members = claimed(rows)
            expected_rows, expected_members = own(store, name, namespace, run_id)
            assert bodies == expected_rows, (name, run_id)
            assert members == expected_members, (name, run_id)
            assert not set(members) & set(all_members), (name, run_id)
            all_members |= members
            every += rows
            checked += 1
        claimed(every)  # no row of two runs
        parts.append((name, namespace, every))
    assert len(parts) == 5, "every fold stored all it folded"
    for name, namespace, rows in parts:
        take_out(store, name, namespace, rows)
    write_back(store, parts)
    assert (store.hashes, store.zsets) == before
    return checked


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(seed=st.randoms(use_true_random=False), steps=st.integers(50, 400))
def test_the_rows_of_a_run_let_go_are_exactly_its_own_as_stored(
    seed: random.Random, steps: int
) -> None:
    check(seed, steps)


def test_runs_let_go_are_checked_over_fixed_histories() -> None:
    """Enough runs come out of the store, in every fold, that the property means something."""
    assert sum(check(random.Random(seed), 400) for seed in range(4)) > 100


# --- examples, one fold at a time ------------------------------------------------------------


def stored(name: str, projection: Evicting, h: History) -> FakeStore:
    """A store holding what the fold rendered of ``h`` (one commit)."""
    store = FakeStore()
    write_back(store, [(name, "v1", list(fold(projection, h.records)))])  # type: ignore[arg-type]
    return store


def decoded(body: bytes | None) -> object:
    assert body is not None
    return msgspec.json.decode(body)


def taken_out_and_back(store: FakeStore, name: str, rows: Sequence[Row]) -> None:
    before = copy.deepcopy(store.hashes), copy.deepcopy(store.zsets)
    take_out(store, name, "v1", rows)
    write_back(store, [(name, "v1", rows)])
    assert (store.hashes, store.zsets) == before


def test_run_status_a_restarted_deleted_child_and_a_name_taken_over() -> None:
    """Every index of its first render and its last status's; its name row only while the
    name is still its own."""
    h = History()
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r1")
    h.stop_waiting("2026-11-24 10:05:00", "r1")
    h.restart("2026-11-24 10:06:00", "r1", 1)
    h.queue("2026-11-24 10:06:01", "r1", 1)
    h.schedule("2026-11-24 10:07:00", "r1", 1, nodes=("n1",))
    h.start("2026-11-24 10:08:00", "r1", 1)
    h.finish("2026-11-24 11:00:00", "r1", 1)
    h.delete("2026-11-24 12:00:00", "r1")
    spec = RunSpec(name="r2", image="i", command="c", compute=Compute(cluster="c2", gpus=0))
    r2 = ev.RunSubmitted(
        id="again", actor="bob", run_id="r2", name="r1-abcdef", spec=spec, parent="base-xyz"
    )
    h.add("2026-11-24 13:00:00", r2)
    h.stop_waiting("2026-11-24 13:00:01", "r2", user="bob")
    projection = RunStatusProjection()
    store = stored("run_status", projection, h)
    assert projection.let_go("r1")
    assert projection.let_go("r2")
    r1 = as_stored(projection, "r1", store, "run_status", "v1")
    t1, t2 = at("2026-11-24 10:00:00"), at("2026-11-24 13:00:00")
    body = decoded(r1[0].body)
    assert isinstance(body, dict)
    assert (body["status"], body["is_deleted"], body["resumption_count"]) == ("COMPLETED", True, 2)
    runs = store.hashes[keys.projection_rows("run_status", "v1", "run")]
    index = {("created", t1), (f"user:{USER}", t1), ("cluster:c1", t1), ("status:COMPLETED", t1)}
    assert [(r.kind, r.id, r.body, set(r.index)) for r in r1] == [("run", "r1", runs["r1"], index)]
    r2_rows = as_stored(projection, "r2", store, "run_status", "v1")
    assert {(r.kind, r.id) for r in r2_rows} == {("run", "r2"), ("name", "r1-abcdef")}
    assert [r.index for r in r2_rows if r.kind == "name"] == [()]
    assert {i for r in r2_rows for i in r.index} == {
        ("created", t2),
        ("user:bob", t2),
        ("cluster:c2", t2),
        ("status:STOPPED", t2),
        ("parent:base-xyz", t2),
    }
    assert as_stored(projection, "r3", store, "run_status", "v1") == []
    taken_out_and_back(store, "run_status", [*r1, *r2_rows])


def test_attempts_a_run_of_two_attempts() -> None:
    h = History()
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1, max_retries=1)
    h.queue("2026-11-24 10:00:01", "r1")
    h.schedule("2026-11-24 10:01:00", "r1", nodes=("n1",))
    h.start("2026-11-24 10:02:00", "r1")
    h.finish("2026-11-24 11:00:00", "r1", fail=True)
    h.retry("2026-11-24 11:00:01", "r1", 1)
    h.queue("2026-11-24 11:00:02", "r1", 1)
    h.stop_waiting("2026-11-24 11:30:00", "r1", 1)
    projection = AttemptsProjection()
    store = stored("attempts", projection, h)
    hashed = store.hashes[keys.projection_rows("attempts", "v1", "attempt")]
    assert projection.let_go("r1")
    rows = as_stored(projection, "r1", store, "attempts", "v1")
    assert [(r.kind, r.id, r.body, r.index) for r in rows] == [
        ("attempt", "r1:0", hashed["r1:0"], (("run:r1", 0),)),
        ("attempt", "r1:1", hashed["r1:1"], (("run:r1", 1),)),
    ]
    assert as_stored(projection, "r2", store, "attempts", "v1") == []
    taken_out_and_back(store, "attempts", rows)


def test_audit_a_run_trail_but_not_the_refusals_about_it() -> None:
    h = History()
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r1")
    refused = ev.RequestRefused(
        id="no", actor="bob", user="bob", request="run.stop", target="r1-abcdef", code=403,
        why="not yours", run_id="r1",
    )  # fmt: skip
    h.add("2026-11-24 10:00:02", refused)
    h.stop_waiting("2026-11-24 10:05:00", "r1")
    projection = AuditProjection()
    store = stored("audit", projection, h)
    assert projection.let_go("r1")
    rows = as_stored(projection, "r1", store, "audit", "v1")
    times = [at("2026-11-24 10:00:00"), at("2026-11-24 10:00:01")]
    times += [at("2026-11-24 10:05:00")] * 2
    actors = [USER, SCHEDULER, USER, USER]
    assert [(r.id, r.index) for r in rows] == [
        (f"r1#{n}", ((f"actor:{actor}", time),))
        for n, (actor, time) in enumerate(zip(actors, times, strict=True))
    ]
    entries = store.hashes[keys.projection_rows("audit", "v1", "entry")]
    assert "r1!no" in entries  # left in the store, and in its indexes
    refusals = store.zsets[keys.projection_index("audit", "v1", "refused:r1")]
    assert refusals == {"r1!no": float(at("2026-11-24 10:00:02"))}
    assert as_stored(projection, "r2", store, "audit", "v1") == []
    taken_out_and_back(store, "audit", rows)


def test_billing_a_run_its_attempts_and_its_own_totals() -> None:
    """Not the totals by user, cluster, gpu_type or day; an attempt still open is in ``open``
    (read by a fold that never held the run: only the store speaks)."""
    h = History()
    h.submit("2026-11-24 10:00:00", "r1", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r1")
    h.schedule("2026-11-24 10:01:00", "r1", nodes=("n1",))
    h.start("2026-11-24 10:02:00", "r1")
    h.finish("2026-11-24 11:00:00", "r1", fail=True)
    h.restart("2026-11-24 11:10:00", "r1", 1)
    h.queue("2026-11-24 11:10:01", "r1", 1)
    h.schedule("2026-11-24 11:11:00", "r1", 1, nodes=("n1",))
    h.start("2026-11-24 11:12:00", "r1", 1)
    h.finish("2026-11-24 12:00:00", "r1", 1)
    h.submit("2026-11-24 10:00:00", "r2", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r2")
    h.stop_waiting("2026-11-24 10:05:00", "r2")
    h.submit("2026-11-24 10:00:00", "r3", gpus=8, nodes=1)
    h.queue("2026-11-24 10:00:01", "r3")
    h.schedule("2026-11-24 10:01:00", "r3", nodes=("n2",))
    projection = BillingProjection()
    store = stored("billing", projection, h)
    assert projection.let_go("r1")
    assert projection.let_go("r2")
    assert not projection.let_go("r3")  # it holds GPUs
    r1 = as_stored(projection, "r1", store, "billing", "v1")
    assert {(r.kind, r.id, r.index) for r in r1} == {
        ("run", "r1", ()),
        ("attempt", "r1:0", ()),
        ("attempt", "r1:1", ()),
        ("total", "run|r1|a100", (("totals:run", 0),)),
    }
    total = decoded(next(r.body for r in r1 if r.kind == "total"))
    gpu_ms = 8 * (59 + 49) * 60_000  # 10:01 to 11:00, 11:11 to 12:00
    assert total == {
        "dim": "run",
        "value": "r1",
        "gpu_type": "a100",
        "gpu_ms": gpu_ms,
        "attempts": 2,
    }
    r2 = as_stored(projection, "r2", store, "billing", "v1")
    assert [(r.kind, r.id, decoded(r.body), r.index) for r in r2] == [
        ("run", "r2", [USER, "r2-abcdef", []], ())
    ]
    r3 = as_stored(BillingProjection(), "r3", store, "billing", "v1")
    assert {(r.kind, r.id, r.index) for r in r3} == {
        ("run", "r3", ()),
        ("attempt", "r3:0", (("open", at("2026-11-24 10:01:00")),)),
    }
    assert as_stored(projection, "r4", store, "billing", "v1") == []
    taken_out_and_back(store, "billing", [*r1, *r2, *r3])


def test_utilization_a_done_run_a_deleted_one() -> None:
    """A done run's ``done`` row; a deleted run's, marked deleted."""
    h = History()
    h.node("2026-11-24 09:00:00", "n1")
    for run in ("r1", "r2"):
        h.submit("2026-11-24 10:00:00", run, gpus=8, nodes=1)
        h.queue("2026-11-24 10:00:01", run)
        h.schedule("2026-11-24 10:01:00", run, nodes=("n1",))
        h.start("2026-11-24 10:02:00", run)
        h.finish("2026-11-24 11:00:00", run)
    h.delete("2026-11-24 12:00:00", "r2")
    projection = UtilizationProjection()
    store = stored("utilization", projection, h)
    assert projection.let_go("r1")
    assert projection.let_go("r2")
    rows = as_stored(projection, "r1", store, "utilization", "v1")
    done = store.hashes[keys.projection_rows("utilization", "v1", "done")]
    assert rows == [Row(kind="done", id="r1", body=done["r1"])]
    deleted = as_stored(projection, "r2", store, "utilization", "v1")
    assert deleted == [Row(kind="done", id="r2", body=done["r2"])]
    assert done["r2"].endswith(b",true]")
    assert as_stored(projection, "r3", store, "utilization", "v1") == []
    taken_out_and_back(store, "utilization", rows)
