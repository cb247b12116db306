"""Property: whatever users, node-agents, nodes and admins do, decide never puts two active
attempts on one GPU, never gives a node more GPUs than it has, never places on a node that is
lost, cordoned, draining or drained, never leaves an attempt starting or running on a GPU its
node reported failed, and never writes what the rules refuse; that the free capacity the
state keeps node by node is the one rebuilt from every node, which no pass changes; and that a
pass that parks the classes whose outcome is fixed decides what a walk of every waiting
attempt decides, on a waiting index equal to one rebuilt from the runs."""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Collection
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from events import commands
from events.commands import RequestRefused
from events.fit import Shape, fleet
from events.model import AttemptScheduled
from events.spec import PRIORITY_RANK
from events.status import RunStatus as S
from services.scheduler.cluster import ClusterState, Stoppable
from services.scheduler.decision import Context, Decision
from services.scheduler.placement import Capacity, Free, Scratch
from services.scheduler.queue import _Pass, queue_pass
from services.scheduler.round import decide
from services.scheduler.waiting import Waiting, mark_of
from tests.unit.scheduler.world import ACTOR, USER, World

NODES = [f"n{i}" for i in range(5)]
SIZES = {"n0": 8, "n1": 8, "n2": 4, "n3": 8, "n4": 2}
TYPES = {"n0": "a100", "n1": "a100", "n2": "a100", "n3": "h100", "n4": "a100"}

submits = st.tuples(
    st.just("submit"),
    st.sampled_from([0, 1, 2, 4, 8, 16]),
    st.sampled_from([None, None, 1, 2]),
    st.sampled_from([None, None, None, "a100", "h100"]),
    st.sampled_from(["auto", "low", "lowest"]),
    st.booleans(),
    st.integers(0, 2),
    st.booleans(),
)
_BY_KIND: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "submit": submits,
    "running": st.tuples(st.just("running"), st.integers(0, 50)),
    "exit": st.tuples(
        st.just("exit"), st.integers(0, 50), st.integers(0, 3), st.sampled_from([0, 1])
    ),
    "register": st.tuples(st.just("register"), st.sampled_from(NODES)),
    "later": st.tuples(st.just("later"), st.integers(1, 3_600_000)),
    "stop": st.tuples(st.just("stop"), st.integers(0, 50)),
    "delete": st.tuples(st.just("delete"), st.integers(0, 50)),
    "lose": st.tuples(st.just("lose"), st.sampled_from(NODES)),
    "drain": st.tuples(st.just("drain"), st.sampled_from(NODES)),
    "cordon": st.tuples(st.just("cordon"), st.sampled_from(NODES)),
    "drain_request": st.tuples(
        st.just("drain_request"), st.sampled_from(NODES), st.sampled_from([None, 0, 60_000])
    ),
    "uncordon": st.tuples(st.just("uncordon"), st.sampled_from(NODES)),
    "gpu_failed": st.tuples(st.just("gpu_failed"), st.sampled_from(NODES), st.integers(0, 7)),
    "update": st.tuples(
        st.just("update"),
        st.integers(0, 50),
        st.sampled_from([None, "auto", "low", "lowest"]),
        st.sampled_from([None, True, False]),
    ),
}
#: How often each kind is drawn: mostly submissions and rank events, some node trouble.
_WEIGHTS = {"submit": 6, "running": 5, "exit": 4, "register": 3, "later": 2}
operations = st.sampled_from(
    [kind for kind in _BY_KIND for _ in range(_WEIGHTS.get(kind, 1))]
).flatmap(_BY_KIND.__getitem__)


def _active(world: World) -> list[str]:
    return sorted(r for r, run in world.oracle.items() if run.latest.status.is_active())


def _pick(items: list[str], index: int) -> str | None:
    return items[index % len(items)] if items else None


def _apply(world: World, op: tuple[Any, ...], silent: set[str]) -> None:  # noqa: PLR0912
    match op:
        case ("submit", gpus, nodes, gpu_type, priority, preemptible, retries, system):
            world.submit(
                gpus,
                nodes=nodes,
                gpu_type=gpu_type,
                priority=priority,
                preemptible=preemptible,
                max_retries=retries,
                retry_on_system_failure=system,
                max_duration=0.5,
            )
        case ("register", node):
            world.register(node, SIZES[node], TYPES[node])
        case ("running", index):
            if (run := _pick(_active(world), index)) is not None:
                world.running(run)
        case ("exit", index, rank, code):
            if (run := _pick(_active(world), index)) is not None:
                ranks = [r.rank for r in world.oracle[run].latest.ranks if not r.exited]
                if ranks:
                    world.exit(run, ranks[rank % len(ranks)], code)
        case ("stop" | "delete" as what, index):
            if (run := _pick(sorted(world.oracle), index)) is not None:
                command = commands.StopRun(actor=USER) if what == "stop" else None
                with contextlib.suppress(RequestRefused):
                    world.command(run, command or commands.DeleteRun(actor=USER))
        case ("lose", node):
            if node in world.state.nodes:
                silent.add(node)
        case ("drain", node):
            if node in world.state.nodes and not world.state.nodes[node].drained:
                world.drain(node)
        case ("cordon" | "uncordon" as what, node):
            if node in world.state.nodes:
                (world.cordon if what == "cordon" else world.uncordon)(node)
        case ("drain_request", node, grace_ms):
            if node in world.state.nodes:
                world.drain_request(node, grace_ms=grace_ms)
        case ("gpu_failed", node, gpu):
            if node in world.state.nodes and gpu < SIZES[node]:
                world.gpu_failed(node, gpu)
        case ("update", index, priority, preemptible):
            if (run := _pick(sorted(world.oracle), index)) is not None:
                update = commands.UpdateRun(actor=USER, priority=priority, preemptible=preemptible)
                with contextlib.suppress(RequestRefused):
                    world.command(run, update)
        case ("later", ms):
            world.now += ms
        case _:
            raise AssertionError(op)


def _check(world: World) -> None:
    held = world.held()  # fails on a GPU held twice
    for node, gpu in held:
        assert 0 <= gpu < SIZES[node]
    per_node: dict[str, int] = {}
    for node, _ in held:
        per_node[node] = per_node.get(node, 0) + 1
    assert all(count <= SIZES[node] for node, count in per_node.items())
    assert world.state.double_booked == []
    derived = {
        (node, gpu): run
        for node, used in world.state.used.items()
        for gpu, (run, _) in used.items()
    }
    assert derived == held
    for run in world.oracle.values():
        attempt = run.latest
        if attempt.status is S.STARTING:
            assert all(world.state.nodes[rank.node].registered for rank in attempt.ranks)
        if attempt.status in (S.STARTING, S.RUNNING):  # one on a failed GPU is ending
            for rank in attempt.ranks:
                failed = world.state.nodes[rank.node].failed_gpus
                assert not failed.keys() & set(rank.gpus), (rank, failed)


@settings(max_examples=150, deadline=None)
@given(st.lists(operations, min_size=10, max_size=80))
def test_decide_never_double_books_a_gpu(ops: list[tuple[Any, ...]]) -> None:
    world = World()
    world.register("n0", SIZES["n0"], TYPES["n0"])
    for op in ops:
        silent: set[str] = set()
        _apply(world, op, silent)
        closed = {name for name, node in world.state.nodes.items() if not node.usable}
        appended = world.settle(silent=silent)
        placed = {r.node for e in appended if isinstance(e, AttemptScheduled) for r in e.ranks}
        assert not placed & closed, (placed, closed)  # nothing placed on a cordoned node
        _check(world)


def _view(capacity: Free) -> dict[str, tuple[str | None, int, tuple[int, ...]]]:
    """node -> (gpu_type, GPUs, free GPUs) as ``place`` reads them, each node filed once and
    under its free count."""
    view: dict[str, tuple[str | None, int, tuple[int, ...]]] = {}
    for gpu_type in capacity.types():
        for count in capacity.counts(gpu_type):
            for node in capacity.at(gpu_type, count):
                assert node not in view, node
                assert capacity.has(node)
                kind, free = capacity.instance_of(node), capacity.free_of(node)
                assert (kind.gpu_type, len(free)) == (gpu_type, count)
                view[node] = (kind.gpu_type, kind.gpus, tuple(sorted(free)))
    return view


def _found(capacity: Capacity) -> object:
    """What a pass must leave as it found it: the nodes, their free GPUs in order, the buckets
    (the order of ties within one aside), the kinds; and no trial left open."""
    buckets = {
        t: {count: set(nodes) for count, nodes in by_count.items()}
        for t, by_count in capacity.buckets.items()
    }
    return capacity.free, capacity.size, capacity.type_of, buckets, capacity.kinds, capacity._undo


def _rebuilt(state: ClusterState, cluster: str, silent: Collection[str] = ()) -> Capacity:
    """The free GPUs of ``cluster``'s usable nodes, from every node (as a pass once built it)."""
    capacity = Capacity()
    for node in state.clusters.get(cluster, {}).values():
        if node.usable and node.name not in silent:
            capacity.add_node(node.name, node.gpu_type, node.gpus, state.free_gpus(node))
    return capacity


def _check_incremental(world: World, silent: Collection[str]) -> None:
    state = world.state
    for cluster, active in state.active.items():
        ending = state.terminating.get(cluster, set())
        stoppable = {
            r: PRIORITY_RANK[state.runs[r].spec.scheduling.priority]
            for r in active - ending
            if state.runs[r].spec.scheduling.preemptible
        }
        indexed = state.preemptible.get(cluster, Stoppable())
        assert indexed.rank_of == stoppable
        assert {(r, rank) for rank, ids in indexed.by_rank.items() for r in ids} == set(
            stoppable.items()
        )
    for cluster, here in state.clusters.items():
        rebuilt = _rebuilt(state, cluster)
        kept = state.capacity.get(cluster, Capacity())
        assert _view(kept) == _view(rebuilt)
        assert kept.free.keys() == rebuilt.free.keys()
        assert +kept.kinds == +rebuilt.kinds
        assert +state.fleets.get(cluster, Counter()) == +Counter(
            fleet((node.gpu_type, node.gpus) for node in here.values() if node.registered)
        )
        cordoned = {n for n, node in here.items() if node.registered and node.alive}
        cordoned -= {n for n, node in here.items() if node.usable}
        assert set(state.cordoned.get(cluster, {})) == cordoned
        # What a pass places from: the kept capacity less the silent nodes, as rebuilt.
        ctx = Context(world.now, world.new_id, ACTOR)
        with_silent = _rebuilt(state, cluster, silent)
        with kept.trial():
            now = _Pass(state, cluster, ctx, kept, busy=(), silent=silent).now
            assert _view(now) == _view(with_silent)
            for gpus, gpu_type in [(0, None), (1, "a100"), (4, "a100"), (8, "h100"), (2, None)]:
                shape = Shape(1, gpus, gpu_type)
                assert now.nodes_holding(shape) == with_silent.nodes_holding(shape)
                assert now.total_free(gpu_type) == with_silent.total_free(gpu_type)
            # A view of it with nothing given reads the same.
            assert _view(Scratch(now)) == _view(with_silent)


@settings(max_examples=150, deadline=None)
@given(st.lists(operations, min_size=10, max_size=80))
def test_the_kept_capacity_is_the_rebuilt_one_and_a_pass_leaves_it_as_found(
    ops: list[tuple[Any, ...]],
) -> None:
    world = World()
    world.register("n0", SIZES["n0"], TYPES["n0"])
    for op in ops:
        silent: set[str] = set()
        _apply(world, op, silent)
        for _ in range(20):
            _check_incremental(world, silent)
            kept = world.state.capacity
            before = {c: copy.deepcopy(_found(capacity)) for c, capacity in kept.items()}
            decide(world.state, world.now, world.new_id, actor=ACTOR, silent=silent)
            assert {c: _found(capacity) for c, capacity in kept.items()} == before
            if not world.step(silent):
                break
        _check_incremental(world, silent)


def _without_ids(decisions: list[Decision]) -> list[tuple[str, int, list[object]]]:
    return [
        (d.aggregate, d.expected_version, [msgspec.structs.replace(e, id="") for e in d.events])
        for d in decisions
    ]


def _check_waiting(state: ClusterState) -> None:
    """The waiting index equals one rebuilt from the runs: queue order, classes, marks."""
    for cluster, waiting in state.waiting.items():
        rebuilt = Waiting()
        for run_id, run in state.runs.items():
            attempt = run.latest
            if run.spec.compute.cluster != cluster or not attempt.status.is_waiting():
                continue
            if run.deleted or run.delete_requested:
                continue
            priority = PRIORITY_RANK[run.spec.scheduling.priority]
            c = run.spec.compute
            rebuilt.put(
                run_id,
                (-priority, attempt.timeline[0][1], run_id),
                ((c.gpus, c.nodes, c.gpu_type, c.instance), priority),
                mark_of(attempt),
            )
        assert waiting.keys == rebuilt.keys
        assert waiting.entries == rebuilt.entries
        assert waiting.by_class == rebuilt.by_class
        assert waiting.marked == rebuilt.marked


@settings(max_examples=150, deadline=None)
@given(st.lists(operations, min_size=10, max_size=80))
def test_a_pass_that_parks_classes_decides_what_a_walk_of_every_attempt_decides(
    ops: list[tuple[Any, ...]],
) -> None:
    world = World()
    world.register("n0", SIZES["n0"], TYPES["n0"])
    for op in ops:
        silent: set[str] = set()
        _apply(world, op, silent)
        for _ in range(20):
            _check_waiting(world.state)
            ctx = Context(world.now, world.new_id, ACTOR)
            for cluster in sorted(world.state.waiting):
                # On a copy: a pass may leave ties within a bucket in another order.
                same = copy.deepcopy(world.state)
                parked = queue_pass(world.state, cluster, ctx, silent=silent)
                walked = queue_pass(same, cluster, ctx, silent=silent, park=False)
                assert _without_ids(parked) == _without_ids(walked)
            if not world.step(silent):
                break
        _check_waiting(world.state)
