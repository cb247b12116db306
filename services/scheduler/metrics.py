"""The scheduler's Prometheus metrics, named after Kueue's where one fits.

Counters and the histogram move as the active instance's own decisions land (``appended``, from
the edge, after each successful append); the gauges are read from its cluster view at scrape
time (``ClusterCollector``), so no state is kept or recomputed for metrics alone. A standby
instance exports its counters but no gauges. Every label value is bounded: clusters, GPU types,
priorities, the kind of a queue reason (its text before ``:``), reason codes; never a run id,
user or node.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Sequence

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from events.lifecycle import AttemptState
from events.model import AnyEvent, AttemptScheduled, AttemptTerminating
from events.status import RunStatus
from services.core.metrics import REGISTRY
from services.scheduler.cluster import ClusterState
from services.scheduler.waiting import kind

#: A wait lasts from milliseconds (an idle cluster) to hours (a busy one).
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
#: What a waiting attempt that no pass has judged yet (PENDING) is counted under.
NOT_JUDGED = "Pending"

PLACEMENTS = Counter(
    "runplane_placements",
    "Attempts placed on GPUs (attempt.scheduled appended by this scheduler).",
    registry=REGISTRY,
)
EVICTIONS = Counter(
    "runplane_evicted_attempts",
    "Attempts the scheduler ended for a reason other than their own ranks' exit "
    "(Preempted, NodeFailure, GpuFailure, NodeDrained, MaxDurationExceeded, ...).",
    ["reason"],
    registry=REGISTRY,
)
ADMISSION_WAIT = Histogram(
    "runplane_admission_wait_seconds",
    "From an attempt's creation (PENDING: the run's submission, or its retry) to its "
    "placement (STARTING), in log time.",
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)


def admission_wait_ms(attempt: AttemptState) -> int | None:
    """How long ``attempt`` waited from PENDING to STARTING; None if it was not placed."""
    started = next((t for status, t in attempt.timeline if status is RunStatus.STARTING), None)
    if started is None or not attempt.timeline:
        return None
    return started - attempt.timeline[0][1]


def evicted(event: AnyEvent) -> str | None:
    """The reason code ``event`` evicts its attempt for, if it does: a TERMINATING the
    scheduler decided for anything but the attempt's own ranks failing (category ``user``)."""
    if not isinstance(event, AttemptTerminating) or event.reason is None:
        return None
    return None if event.reason.category == "user" else event.reason.code


def appended(events: Sequence[AnyEvent], state: ClusterState) -> None:
    """Count ``events``, which the scheduler has just appended and applied to ``state``."""
    for event in events:
        if isinstance(event, AttemptScheduled):
            PLACEMENTS.inc()
            run = state.runs.get(event.run_id)
            if run is not None and run.latest.index == event.attempt:
                wait = admission_wait_ms(run.latest)
                if wait is not None:
                    ADMISSION_WAIT.observe(max(wait, 0) / 1000)
        elif (reason := evicted(event)) is not None:
            EVICTIONS.labels(reason).inc()


def pending(state: ClusterState) -> Tally[tuple[str, str, str]]:
    """The waiting (PENDING or QUEUED) attempts by (cluster, priority, reason kind)."""
    counts: Tally[tuple[str, str, str]] = Tally()
    for cluster, waiting in state.waiting.items():
        for run_id in waiting:
            run = state.runs.get(run_id)
            if run is None:
                continue
            why = kind(run.latest.queue_reason) or NOT_JUDGED
            counts[cluster, run.spec.scheduling.priority, why] += 1
    return counts


def gpus(state: ClusterState) -> Tally[tuple[str, str, str]]:
    """The registered nodes' GPUs by (cluster, GPU type, state): ``held`` by an attempt,
    ``failed`` (reported by its node, not held), and of the rest ``free`` on a node that takes
    placements, ``cordoned`` on one up but cordoned, draining or drained, ``lost`` on one
    whose heartbeats stopped."""
    counts: Tally[tuple[str, str, str]] = Tally()
    for node in state.nodes.values():
        if not node.registered or not node.gpus:
            continue
        used = state.used.get(node.name, {})
        held = sum(gpu in used for gpu in range(node.gpus))
        failed = sum(gpu not in used for gpu in node.failed_gpus if gpu < node.gpus)
        rest = node.gpus - held - failed
        idle = "free" if node.usable else "cordoned" if node.alive else "lost"
        for which, count in (("held", held), ("failed", failed), (idle, rest)):
            counts[node.cluster, node.gpu_type or "", which] += count
    return counts


class ClusterCollector(Collector):
    """The gauges of ``state``, the active instance's cluster view (None: standing by)."""

    def __init__(self) -> None:
        self.state: ClusterState | None = None

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:
            return
        waiting = GaugeMetricFamily(
            "runplane_pending_runs",
            "Runs whose latest attempt waits for a placement (PENDING or QUEUED), by the "
            "kind of its queue reason.",
            labels=["cluster", "priority", "reason"],
        )
        for labels, count in sorted(pending(state).items()):
            waiting.add_metric(labels, count)
        yield waiting
        held = GaugeMetricFamily(
            "runplane_gpus",
            "GPUs of the registered nodes by state: free, held, cordoned, failed, lost.",
            labels=["cluster", "gpu_type", "state"],
        )
        for labels, count in sorted(gpus(state).items()):
            held.add_metric(labels, count)
        yield held


CLUSTER = ClusterCollector()
REGISTRY.register(CLUSTER)
