"""The folds on hand-written histories: run status, attempts (describe run), audit, util."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import lifecycle
from events.codec import Recorded
from events.model import (
    AnyRunEvent,
    AttemptFailed,
    AttemptQueued,
    AttemptRunning,
    AttemptStopped,
    AttemptTerminating,
    KeyIssued,
    KeyRevoked,
    NodeCordoned,
    NodeGpuFailed,
    NodeUncordoned,
    RankExited,
    RankRunning,
    Reason,
    RunEvent,
    StopRequested,
    UserAdded,
)
from events.status import RunStatus
from projections.attempts import AttemptRow, AttemptsProjection
from projections.audit import AuditProjection, Entry, entry_of
from projections.base import Row, takes
from projections.billing import BillingProjection
from projections.run_status import RunRow, RunStatusProjection
from projections.utilization import (
    Instance,
    NodeLine,
    RunLine,
    UtilizationProjection,
    queue_order,
)
from tests.unit.projections.history import SCHEDULER, History, at, fold
from tests.unit.projections.simulator import Simulator

S = RunStatus


def retried_then_restarted() -> History:
    """r1: attempt 0 fails (exit 1 on rank 1), retried; attempt 1 stopped by bob while
    running; alice restarts it; attempt 2 waits in the queue."""
    h = History()
    h.submit("2026-11-24 12:59:00", "r1", max_retries=1)
    h.queue("2026-11-24 12:59:01", "r1")
    h.schedule("2026-11-24 13:00:00", "r1")
    h.start("2026-11-24 13:02:00", "r1")
    h.finish("2026-11-24 13:58:00", "r1", fail=True, end="2026-11-24 13:59:00")
    h.retry("2026-11-24 14:00:00", "r1", 1)
    h.queue("2026-11-24 14:00:01", "r1", 1)
    h.schedule("2026-11-24 14:03:00", "r1", 1)
    h.start("2026-11-24 14:04:00", "r1", 1)
    h.update("2026-11-24 14:10:00", "r1", priority="low")

    stop = Reason(category="stopped", code="Stopped", message="stopped by bob@example.com")
    h.add(
        "2026-11-24 15:00:00",
        StopRequested(id=h.new_id(), actor="bob@example.com", run_id="r1", attempt=1),
        AttemptTerminating(
            id=h.new_id(), actor="bob@example.com", run_id="r1", attempt=1, reason=stop
        ),
    )
    for rank, node in enumerate(("n1", "n2")):
        h.add(
            "2026-11-24 15:00:30",
            RankExited(
                id=h.new_id(),
                actor=f"agent@{node}",
                run_id="r1",
                attempt=1,
                rank=rank,
                node=node,
                exit_code=143,
                signal=15,
                reason=stop,
            ),
        )
    h.add(
        "2026-11-24 15:01:00",
        AttemptStopped(
            id=h.new_id(), actor="scheduler@control-0", run_id="r1", attempt=1, reason=stop
        ),
    )
    h.restart("2026-11-24 16:00:00", "r1", 2)
    h.queue("2026-11-24 16:00:01", "r1", 2)
    return h


def decode_rows(rows: list[Row], kind: str, type_: type) -> dict[str, object]:
    return {
        row.id: msgspec.json.decode(row.body, type=type_)
        for row in rows
        if row.kind == kind and row.body is not None
    }


def test_run_status_follows_the_latest_attempt() -> None:
    rows = fold(RunStatusProjection(), retried_then_restarted().records)
    run = decode_rows(rows, "run", RunRow)["r1"]
    assert isinstance(run, RunRow)
    assert (run.status, run.reason, run.resumption_count) == (S.QUEUED, None, 3)
    assert run.created_at == at("2026-11-24 12:59:00")
    assert run.started_at == at("2026-11-24 13:00:00")
    assert run.completed_at is None
    assert run.updated_at == at("2026-11-24 16:00:01")
    assert (run.priority, run.submitted_config.scheduling.priority) == ("low", "auto")
    assert (run.gpus, run.node_count, run.cluster, run.gpu_type) == (16, 2, "c1", "a100")
    assert run.metadata == {"team": "nlp"}
    assert decode_rows(rows, "name", str) == {"r1-abcdef": "r1"}
    [row] = [r for r in rows if r.kind == "run"]
    assert ("status:QUEUED", run.created_at) in row.index
    assert row.unindex == ()


def test_a_run_moves_between_status_indexes() -> None:
    records = retried_then_restarted().records
    projection = RunStatusProjection()
    fold(projection, records[:2])  # rendered while QUEUED
    [row] = [r for r in fold(projection, records[2:3]) if r.kind == "run"]
    assert ("status:STARTING", row.index[0][1]) in row.index
    assert row.unindex == ("status:QUEUED",)


def test_attempts_have_timelines_ranks_reasons_and_describe_lines() -> None:
    rows = fold(AttemptsProjection(), retried_then_restarted().records)
    attempts = decode_rows(rows, "attempt", AttemptRow)
    first, second, third = (attempts[f"r1:{i}"] for i in range(3))
    assert isinstance(first, AttemptRow)
    assert isinstance(second, AttemptRow)
    assert isinstance(third, AttemptRow)
    assert first.status is S.FAILED
    assert [p.status for p in first.phases] == [
        S.PENDING,
        S.QUEUED,
        S.STARTING,
        S.RUNNING,
        S.TERMINATING,
        S.FAILED,
    ]
    assert first.queue_ms == 60_000
    assert first.setup_ms == 120_000
    assert first.run_ms == 56 * 60_000
    assert first.cleanup_ms == 60_000
    assert first.first_failed_rank == 1
    assert first.reason_text == "Error (exit code 1)"
    assert [(r.rank, r.node, r.status, r.exit_code) for r in first.ranks] == [
        (0, "n1", S.COMPLETED, 0),
        (1, "n2", S.FAILED, 1),
    ]
    assert (second.opened_how, second.retry_cause, second.stopped_by) == (
        "retry",
        "user_failure",
        "bob@example.com",
    )
    assert (third.opened_how, third.opened_by, third.status) == (
        "restart",
        "alice@example.com",
        S.QUEUED,
    )
    assert third.queue_ms is None  # still waiting
    lines = [(e.attempt, e.text) for a in (first, second, third) for e in a.events]
    assert lines == [
        (0, "Run created"),
        (0, "Run placed in the scheduling queue"),
        (0, "Run scheduled on n1, n2"),
        (0, "Run started"),
        (0, "Run terminating: Error (exit code 1)"),
        (0, "Rank 1 on n2 exited with exit code 1: Error (exit code 1)"),
        (0, "Run failed with exit code 1"),
        (1, "Run retried after a failure"),
        (1, "Run placed back in the scheduling queue"),
        (1, "Run scheduled on n1, n2"),
        (1, "Run resumed"),
        (1, "Run updated by alice@example.com: priority=low"),
        (1, "Run stopped by bob@example.com"),
        (1, "Rank 0 on n1 ended by signal 15 (stopped by bob@example.com)"),
        (1, "Rank 1 on n2 ended by signal 15 (stopped by bob@example.com)"),
        (2, "Run restarted by alice@example.com"),
        (2, "Run placed back in the scheduling queue"),
    ]


def test_a_waiting_attempt_has_the_shape_it_was_queued_with_until_it_is_placed() -> None:
    h = History()
    h.submit("2026-11-24 10:00:00", "r1", gpus=16, nodes=2)
    h.add(
        "2026-11-24 10:00:01",
        AttemptQueued(
            id=h.new_id(), actor=SCHEDULER, run_id="r1", nodes=2, gpus=16, gpu_type="a100"
        ),
    )
    projection = AttemptsProjection()
    [queued] = decode_rows(fold(projection, h.records), "attempt", AttemptRow).values()
    assert isinstance(queued, AttemptRow)
    assert (queued.node_count, queued.gpus, queued.gpu_type) == (2, 16, "a100")
    h.schedule("2026-11-24 10:01:00", "r1", nodes=("n1", "n2", "n3"), gpus=4)
    [placed] = decode_rows(fold(projection, h.records[-1:]), "attempt", AttemptRow).values()
    assert isinstance(placed, AttemptRow)
    assert (placed.node_count, placed.gpus) == (3, 12)


def test_a_fold_skips_what_the_rules_refuse_and_goes_on() -> None:
    h = retried_then_restarted()
    bogus = h.records[3]  # attempt.scheduled of attempt 0, again, far too late
    records = [*h.records, bogus._replace(position="99999999999999-0")]
    for projection in (RunStatusProjection(), AttemptsProjection()):
        assert fold(projection, records)  # no exception


def fast_failing_rank() -> History:
    """The log of ``examples/fail-rank1.yaml`` in ``make demo``, as recorded: rank 1 exits 3
    before the scheduler has seen every rank running, so the scheduler appends
    attempt.running and attempt.terminating together after rank 1's exit (the rules accept it:
    every rank's command started); the agent then stops rank 0 and the attempt fails."""
    h = History()
    h.submit("2026-12-04 18:10:00.930", "r1", gpus=2)
    h.queue("2026-12-04 18:10:00.975", "r1")
    h.schedule("2026-12-04 18:10:00.975", "r1", nodes=("node-0", "node-1"), gpus=1)
    h.rank_running("2026-12-04 18:10:01.067", "r1", 1)
    h.rank_running("2026-12-04 18:10:01.081", "r1", 0)
    error = Reason(category="user", code="Error", message="exit 3", exit_code=3)
    h.rank_exited("2026-12-04 18:10:01.094", "r1", 1, exit_code=3, reason=error)
    failed = msgspec.structs.replace(error, failed_rank=1)
    h.add(
        "2026-12-04 18:10:01.117",
        AttemptRunning(id=h.new_id(), actor=SCHEDULER, run_id="r1"),
        AttemptTerminating(id=h.new_id(), actor=SCHEDULER, run_id="r1", reason=failed),
    )
    h.rank_exited("2026-12-04 18:10:01.137", "r1", 0, signal=15, reason=failed)
    h.add(
        "2026-12-04 18:10:01.161",
        AttemptFailed(id=h.new_id(), actor=SCHEDULER, run_id="r1", reason=failed),
    )
    return h


def test_attempt_running_after_a_rank_already_exited_is_folded() -> None:
    h = fast_failing_rank()
    with structlog.testing.capture_logs() as logs:
        rows = fold(AttemptsProjection(), h.records)
    assert [log for log in logs if log["event"] == "projection.skipped"] == []
    [attempt] = decode_rows(rows, "attempt", AttemptRow).values()
    assert isinstance(attempt, AttemptRow)
    assert [(p.status, p.entered_at) for p in attempt.phases] == h.states["r1"].latest.timeline
    assert S.RUNNING in [p.status for p in attempt.phases]
    assert (attempt.status, attempt.first_failed_rank, attempt.run_ms) == (S.FAILED, 1, 0)
    assert [r.started_at for r in attempt.ranks] == [
        at("2026-12-04 18:10:01.081"),
        at("2026-12-04 18:10:01.067"),
    ]
    assert "Run started" in [e.text for e in attempt.events]


def test_attempt_running_before_every_rank_ran_is_still_skipped() -> None:
    h = fast_failing_rank()
    # Drop rank 0's rank.running: rank 0 never ran, so the rules refuse attempt.running.
    records = [r for r in h.records if not (isinstance(r.event, RankRunning) and r.event.rank == 0)]
    with structlog.testing.capture_logs() as logs:
        rows = fold(AttemptsProjection(), records)
    [skip] = [log for log in logs if log["event"] == "projection.skipped"]
    assert (skip["type"], skip["why"]) == ("AttemptRunning", "not every rank runs yet")
    [attempt] = decode_rows(rows, "attempt", AttemptRow).values()
    assert isinstance(attempt, AttemptRow)
    assert S.RUNNING not in [p.status for p in attempt.phases]


def test_audit_records_who_did_what_deleted_runs_included() -> None:
    h = retried_then_restarted()
    h.submit("2026-11-24 17:00:00", "r2", user="carol@example.com")
    h.stop_waiting("2026-11-24 17:01:00", "r2", user="carol@example.com")
    h.delete("2026-11-24 17:02:00", "r2", user="carol@example.com")
    rows = fold(AuditProjection(), h.records)
    entries = decode_rows(rows, "entry", Entry)
    carol = [e for e in entries.values() if isinstance(e, Entry) and e.actor == "carol@example.com"]
    assert [e.action for e in sorted(carol, key=lambda e: e.position)] == [
        "run.submitted",
        "run.stop_requested",
        "attempt.stopped",
        "run.delete_requested",
        "run.deleted",
    ]
    bob = [e for e in entries.values() if isinstance(e, Entry) and e.actor == "bob@example.com"]
    assert {e.action for e in bob} == {"run.stop_requested", "attempt.terminating"}
    r1 = sorted(int(key.partition("#")[2]) for key in entries if key.startswith("r1#"))
    assert r1 == list(range(len(r1)))  # a run's trail: #0, #1, ... with no gap
    first = entries["r1#0"]
    assert isinstance(first, Entry)
    assert first.action == "run.submitted"
    assert all("image." not in row.body.decode() for row in rows if row.body)


def test_audit_says_how_a_rank_ended_and_why() -> None:
    """A rank ended by a signal names the signal and the reason the event records, never
    "exit code None"; an exit code or a lost rank says so, with its reason."""
    stopped = Reason(category="stopped", code="Stopped", message="stopped by root")
    preempted = Reason(category="preempted", code="Preempted")
    error = Reason(category="user", code="Error", exit_code=3)
    lost = Reason(category="system", code="RankLost", message="the shim is gone")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"signal": 15, "reason": stopped}, "rank 1 ended by signal 15 (Stopped)"),
        ({"signal": 9, "reason": preempted}, "rank 1 ended by signal 9 (Preempted)"),
        ({"exit_code": 3, "reason": error}, "rank 1 exited with code 3 (Error)"),
        ({"exit_code": 143, "reason": stopped}, "rank 1 exited with code 143 (Stopped)"),
        ({"reason": lost}, "rank 1 ended without an exit code (RankLost)"),
    ]
    for fields, detail in cases:
        exited = RankExited(id="e", actor="agent@n2", run_id="r1", rank=1, node="n2", **fields)
        entry = entry_of(Recorded("1-0", 9, exited), {"r1": "r1-name"})
        assert entry is not None
        assert entry.detail == detail


def test_users_and_keys_are_audited_by_who_did_it_and_no_run_fold_takes_them() -> None:
    h = retried_then_restarted()
    key_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    h.add(
        "2026-11-24 16:00:00",
        UserAdded(id=h.new_id(), actor="root", user="bob@example.com", role="user"),
        KeyIssued(
            id=h.new_id(),
            actor="root",
            user="bob@example.com",
            key_id="k3v9x2m7q1wz",
            key_hash=key_hash,
            expires_at=1_800_000_000_000,
        ),
        KeyRevoked(id=h.new_id(), actor="root", user="bob@example.com", key_id="k3v9x2m7q1wz"),
    )
    identity = h.records[-3:]
    for projection in (
        RunStatusProjection(),
        AttemptsProjection(),
        BillingProjection(),
        UtilizationProjection(),
    ):
        assert not any(takes(projection, type(r.event)) for r in identity), projection.name
    rows = fold(AuditProjection(), h.records)
    trail = {
        key: entry
        for key, entry in decode_rows(rows, "entry", Entry).items()
        if key.startswith("user:")
    }
    assert list(trail) == [f"user:bob@example.com#{n}" for n in range(3)]
    entries = [e for e in trail.values() if isinstance(e, Entry)]
    assert [(e.actor, e.action, e.user, e.detail) for e in entries] == [
        ("root", "user.added", "bob@example.com", "user"),
        ("root", "key.issued", "bob@example.com", "key k3v9x2m7q1wz, expires at 1800000000000"),
        ("root", "key.revoked", "bob@example.com", "key k3v9x2m7q1wz"),
    ]
    assert all(key_hash not in row.body.decode() for row in rows if row.body)


def test_utilization_counts_gpus_and_orders_the_queue() -> None:
    h = History()
    for node in ("n1", "n2", "n3"):
        h.node("2026-11-24 09:00:00", node)
    h.submit("2026-11-24 10:00:00", "big")
    h.queue("2026-11-24 10:00:01", "big")
    h.schedule("2026-11-24 10:01:00", "big", nodes=("n1", "n2"), gpus=6)
    h.submit("2026-11-24 10:05:00", "old-low", priority="low", gpus=8, nodes=1)
    h.queue("2026-11-24 10:05:01", "old-low", reason="Insufficient resources")
    h.submit("2026-11-24 10:06:00", "new-auto", gpus=8, nodes=1)
    h.queue("2026-11-24 10:06:01", "new-auto")
    h.node("2026-11-24 10:07:00", "n3", state="drained")
    projection = UtilizationProjection()
    rows = fold(projection, h.records)
    [instance] = decode_rows(rows, "instance", Instance).values()
    assert isinstance(instance, Instance)
    assert (instance.name, instance.node_info, instance.nodes) == ("a100x8", "8xa100", 3)
    assert (instance.gpus_total, instance.gpus_used, instance.gpus_available) == (24, 12, 4)
    assert instance.gpus_cordoned == 8  # n3's, drained: apart from the available ones
    active = decode_rows(rows, "active", RunLine)
    assert list(active) == ["big"]
    queued = decode_rows(rows, "queued", RunLine)
    order = queue_order(q for q in queued.values() if isinstance(q, RunLine))
    assert [q.run_id for q in order] == ["new-auto", "old-low"]
    assert order[1].reason == "Insufficient resources"
    h.start("2026-11-24 11:00:00", "big")
    h.finish("2026-11-24 12:00:00", "big")
    h.node("2026-11-24 12:00:01", "n2", state="lost")
    rows = fold(projection, h.records[len(h.records) - 7 :])
    [instance] = decode_rows(rows, "instance", Instance).values()
    assert isinstance(instance, Instance)
    assert (instance.nodes, instance.gpus_total, instance.gpus_used, instance.gpus_available) == (
        2,
        16,
        0,
        8,
    )
    assert instance.registered == 3  # the lost node may come back: the fit rules count it
    assert instance.gpus_cordoned == 8
    assert [row for row in rows if row.kind == "active"] == [
        Row(kind="active", id="big", body=None, unindex=("active:c1",))
    ]


def test_utilization_shows_cordoned_gpus_until_uncordoned_whatever_the_agent_does() -> None:
    h = History()
    h.node("2026-11-24 09:00:00", "n1")
    h.node("2026-11-24 09:00:00", "n2")
    common: dict[str, Any] = {"actor": "root", "node": "n2", "cluster": "c1"}
    h.add("2026-11-24 09:01:00", NodeCordoned(id=h.new_id(), reason="fan", **common))
    h.node("2026-11-24 09:02:00", "n2")  # its agent restarted and registered again
    projection = UtilizationProjection()
    rows = fold(projection, h.records)
    [instance] = decode_rows(rows, "instance", Instance).values()
    assert isinstance(instance, Instance)
    assert (instance.gpus_available, instance.gpus_cordoned) == (8, 8)
    line = decode_rows(rows, "node", NodeLine)["n2"]
    assert isinstance(line, NodeLine)
    assert (line.state, line.service, line.reason, line.by) == ("up", "cordoned", "fan", "root")
    assert line.since == at("2026-11-24 09:01:00")
    h.add("2026-11-24 09:03:00", NodeUncordoned(id=h.new_id(), **common))
    [instance] = decode_rows(fold(projection, h.records[-1:]), "instance", Instance).values()
    assert isinstance(instance, Instance)
    assert (instance.gpus_available, instance.gpus_cordoned) == (16, 0)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(rng=st.randoms(use_true_random=False), steps=st.integers(20, 400))
def test_the_folds_agree_with_the_lifecycle_rules(rng: random.Random, steps: int) -> None:
    records = Simulator(rng, runs=8).play(steps)
    runs, attempts = RunStatusProjection(), AttemptsProjection()
    for record in records:
        for projection in (runs, attempts):
            if takes(projection, type(record.event)):
                projection.apply(record)
    by_run: dict[str, list[AnyRunEvent]] = {}
    for record in records:
        if isinstance(record.event, RunEvent):
            by_run.setdefault(record.event.run_id, []).append(record.event)
    for run_id, events in by_run.items():
        state = lifecycle.fold(events)
        assert state is not None
        rows = attempts.runs[run_id]
        assert [a.status for a in rows] == [a.status for a in state.attempts]
        for row, rules in zip(rows, state.attempts, strict=True):
            assert [(p.status, p.entered_at) for p in row.phases] == rules.timeline
            assert [(r.rank, r.node, r.gpus, r.exit_code) for r in row.ranks] == [
                (r.rank, r.node, r.gpus, r.exit_code) for r in rules.ranks
            ]
            assert row.reason == rules.reason
            assert row.gpus == rules.gpus
        run = runs.runs[run_id]
        assert (run.status, run.resumption_count) == (state.status, len(state.attempts))
        assert run.is_deleted == state.deleted
        assert run.priority == state.spec.scheduling.priority


def test_utilization_shows_failed_gpus_apart_until_the_node_registers_again() -> None:
    h = History()
    h.node("2026-11-24 09:00:00", "n1")
    h.submit("2026-11-24 09:00:01", "big", gpus=2, nodes=1)
    h.queue("2026-11-24 09:00:02", "big")
    h.schedule("2026-11-24 09:00:03", "big", nodes=("n1",), gpus=2)
    common: dict[str, Any] = {"actor": "node-agent@n1", "node": "n1", "cluster": "c1"}
    for gpu in (0, 5):  # GPU 0 is held by big's rank, GPU 5 is free
        failed = NodeGpuFailed(
            id=h.new_id(), gpu=gpu, gpu_uuid=f"GPU-{gpu}", error="Xid 79", **common
        )
        h.add("2026-11-24 09:01:00", failed)
    projection = UtilizationProjection()
    [instance] = decode_rows(fold(projection, h.records), "instance", Instance).values()
    assert isinstance(instance, Instance)
    assert (instance.gpus_used, instance.gpus_failed, instance.gpus_available) == (2, 2, 4)
    assert instance.gpus_cordoned == 0
    h.node("2026-11-24 09:02:00", "n1")  # its agent restarted: it watches its GPUs anew
    [instance] = decode_rows(fold(projection, h.records[-1:]), "instance", Instance).values()
    assert isinstance(instance, Instance)
    assert (instance.gpus_failed, instance.gpus_available) == (0, 6)
