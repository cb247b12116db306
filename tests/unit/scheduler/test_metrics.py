"""The scheduler's metrics over its cluster view: what the gauges read, what a decision counts."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry

from events.model import AttemptScheduled, AttemptTerminating, Reason
from services.core.metrics import REGISTRY
from services.scheduler import metrics
from services.scheduler.cluster import ClusterState
from tests.unit.scheduler.world import World


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_gpus_are_counted_held_free_cordoned_and_failed_per_cluster_and_type() -> None:
    world = World()
    world.register("n1", 8)
    world.register("n2", 4)
    world.register("n3", 2, gpu_type="h100", cluster="c2")
    run = world.submit(8)
    world.settle()
    assert world.placement(run)[0][0] == "n1"
    world.cordon("n2")
    world.gpu_failed("n3", 1)
    assert metrics.gpus(world.state) == Counter(
        {
            ("c1", "a100", "held"): 8,
            ("c1", "a100", "cordoned"): 4,
            ("c2", "h100", "free"): 1,
            ("c2", "h100", "failed"): 1,
        }
    )


def test_the_waiting_runs_are_counted_by_cluster_priority_and_the_kind_of_their_reason() -> None:
    world = World()
    world.register("n1", 8)
    world.submit(8)
    world.settle()
    queued = world.submit(4, priority="low")
    world.settle()
    unjudged = world.submit(1)  # submitted, no round since: PENDING
    assert world.oracle[queued].latest.queue_reason.startswith("Insufficient resources:")
    assert metrics.pending(world.state) == Counter(
        {("c1", "low", "Insufficient resources"): 1, ("c1", "auto", metrics.NOT_JUDGED): 1}
    )
    assert unjudged in world.state.waiting["c1"]


def test_the_collector_reads_the_active_view_and_nothing_while_standing_by() -> None:
    world = World()
    world.register("n1", 2)
    world.submit(1)
    world.settle()
    world.submit(2)
    world.settle()
    collector = metrics.ClusterCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("runplane_gpus", {}) is None
    collector.state = world.state
    free = {"cluster": "c1", "gpu_type": "a100", "state": "free"}
    assert registry.get_sample_value("runplane_gpus", free) == 1
    reason = {"cluster": "c1", "priority": "auto", "reason": "Insufficient resources"}
    assert registry.get_sample_value("runplane_pending_runs", reason) == 1
    collector.state = ClusterState()
    assert registry.get_sample_value("runplane_gpus", free) is None


def test_a_placement_is_counted_with_its_wait_from_pending_to_starting() -> None:
    world = World()
    world.register("n1", 8)
    run = world.submit(8)
    placed, waits, waited = (
        value("runplane_placements_total"),
        value("runplane_admission_wait_seconds_count"),
        value("runplane_admission_wait_seconds_sum"),
    )
    appended = world.settle()
    metrics.appended(appended, world.state)
    timeline = dict(world.oracle[run].latest.timeline)
    [scheduled] = [e for e in appended if isinstance(e, AttemptScheduled)]
    assert value("runplane_placements_total") == placed + 1
    assert value("runplane_admission_wait_seconds_count") == waits + 1
    wait_s = (scheduled.time - min(timeline.values())) / 1000
    assert value("runplane_admission_wait_seconds_sum") - waited == wait_s
    assert metrics.admission_wait_ms(world.oracle[run].latest) == wait_s * 1000


def test_an_attempt_the_scheduler_ends_is_an_eviction_by_its_reason_code() -> None:
    world = World()
    world.register("n1", 8)
    run = world.submit(8)
    world.settle()
    world.running(run)
    world.settle()
    before = value("runplane_evicted_attempts_total", reason="NodeDrained")
    world.drain("n1")
    metrics.appended(world.settle(), world.state)
    assert value("runplane_evicted_attempts_total", reason="NodeDrained") == before + 1


def test_an_attempt_ended_by_its_own_rank_is_no_eviction() -> None:
    failed = Reason(category="user", code="Error", message="rank 0 exited with code 1")
    ending = AttemptTerminating(id="e", actor="s", run_id="r", attempt=0, reason=failed)
    assert metrics.evicted(ending) is None
    preempted = Reason(category="preempted", code="Preempted", message="by a high run")
    assert metrics.evicted(AttemptTerminating(id="e", actor="s", run_id="r", attempt=0)) is None
    ending = AttemptTerminating(id="e", actor="s", run_id="r", attempt=0, reason=preempted)
    assert metrics.evicted(ending) == "Preempted"
