"""The SDK's objects, with mcli's names: ``Run``, its resumptions, lifecycle and nodes.

A ``Run`` is built from the two read models of a run (``projections.run_status.RunRow`` and
the ``projections.attempts.AttemptRow`` of each attempt), whether they were read from the
projector's store (listings) or folded just now from the run's own history (``get_run``, so a
run is never stale right after the request that changed it). Times are timezone-aware UTC
datetimes; durations are seconds. Pure: ``now`` is passed in where an open attempt counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from events.config import RunConfig
from events.spec import RunSpec
from events.status import RunStatus
from events.usage import HOUR_MS, gpu_ms
from projections.attempts import AttemptRow, Phase
from projections.run_status import RunRow

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

S = RunStatus


def to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Resumption:
    """One attempt of a run (mcli: resumption), from index 0."""

    index: int
    cluster: str
    gpus: int
    cpus: int
    gpu_type: str | None
    node_count: int
    status: RunStatus
    started_at: datetime | None  # entered STARTING (took its GPUs)
    ended_at: datetime | None  # left TERMINATING (or ended while waiting)
    reason: str | None
    opened_at: datetime | None = None
    opened_how: str = "submitted"  # submitted | restart | retry
    reason_code: str | None = None  # FailedImagePull, Error, Stopped, ...
    started_ms: int | None = field(default=None, repr=False)  # the log's times of the above
    ended_ms: int | None = field(default=None, repr=False)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal()

    def gpu_ms(self, now_ms: int) -> int:
        """GPU-ms by the usage rule (``events.usage``), an open resumption counted to ``now_ms``."""
        if self.started_ms is None:
            return 0
        return gpu_ms(self.gpus, self.started_ms, self.ended_ms or now_ms)


@dataclass(frozen=True)
class RunLifecycle:
    """One phase of one resumption: when it was entered and left."""

    resumption_index: int
    status: RunStatus
    started_at: datetime | None
    ended_at: datetime | None
    reason: str | None = None


@dataclass(frozen=True)
class Node:
    """One rank of the latest resumption: the node it runs on and how it is doing."""

    rank: int
    name: str
    status: RunStatus
    reason: str | None = None
    gpus: tuple[int, ...] = ()
    exit_code: int | None = None
    #: The physical GPUs, by UUID, in the order of ``gpus`` (empty: the placement named none).
    gpu_uuids: tuple[str, ...] = ()
    #: Its GPUs' mean utilization (%) and peak memory (MiB) once it ended; None: not sampled.
    gpu_utilization: int | None = None
    gpu_memory_peak_mib: int | None = None


@dataclass(frozen=True)
class RunEvent:
    """One line of ``describe run``'s event log."""

    time: datetime
    resumption_index: int
    text: str
    actor: str


@dataclass(eq=False)
class Run:
    """A run, as mcli's SDK returns it. Methods talk to runplane (see ``RunActions``).

    Its fields repeat much of ``projections.run_status.RunRow`` on purpose: the row is what the
    projector stores (compact, versioned), this is mcli's public object (its names and types,
    datetimes), and ``build_run`` is the one place that maps the one onto the other."""

    run_uid: str
    name: str
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    created_by: str
    priority: str
    preemptible: bool
    retry_on_system_failure: bool
    max_retries: int
    max_duration: float | None
    cluster: str
    gpus: int
    gpu_type: str | None
    cpus: int
    node_count: int
    image: str
    submitted_config: RunConfig
    metadata: dict[str, Any]
    is_deleted: bool = False
    reason: str | None = None
    resumptions: list[Resumption] = field(default_factory=list)
    lifecycle: list[RunLifecycle] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    events: list[RunEvent] = field(default_factory=list)
    reason_code: str | None = None
    first_failed_rank: int | None = None
    spec: RunSpec | None = field(default=None, repr=False)
    #: The run it was submitted from (mcli's ``parentName``), and the runs submitted from it
    #: (``describe`` fills them in).
    parent: str | None = None
    children: list[Run] = field(default_factory=list, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and (self.run_uid, self.updated_at, self.status) == (
            other.run_uid,
            other.updated_at,
            other.status,
        )

    def __hash__(self) -> int:
        return hash(self.run_uid)

    @property
    def requested_cluster(self) -> str:
        return str(self.submitted_config.compute.get("cluster", ""))

    @property
    def run_type(self) -> str:
        return "TRAINING"

    @property
    def latest_resumption(self) -> Resumption:
        return self.resumptions[-1]

    @property
    def resumption_count(self) -> int:
        return len(self.resumptions)

    @property
    def started_at(self) -> datetime | None:
        """When the first resumption took its GPUs."""
        return next((r.started_at for r in self.resumptions if r.started_at), None)

    @property
    def completed_at(self) -> datetime | None:
        """When the latest resumption ended (None while it is open)."""
        return self.resumptions[-1].ended_at if self.resumptions else None

    @property
    def cumulative_pending_time(self) -> float:
        """Seconds spent PENDING or QUEUED, over every resumption."""
        return self._time_in(RunStatus.is_waiting)

    @property
    def cumulative_running_time(self) -> float:
        """Seconds spent RUNNING, over every resumption."""
        return self._time_in(lambda status: status is S.RUNNING)

    def _time_in(self, counts: Callable[[RunStatus], bool]) -> float:
        now = datetime.now(tz=UTC)
        total = 0.0
        for phase in self.lifecycle:
            if counts(phase.status) and phase.started_at is not None:
                total += ((phase.ended_at or now) - phase.started_at).total_seconds()
        return total

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON-ready data (what ``mcli get runs -o json`` prints, one per run):
        the fields above by their names (those ``repr`` shows; ``spec`` is
        ``submitted_config`` again), then ``started_at``, ``completed_at`` and
        ``resumption_count``. Times are ISO 8601, statuses their names, numbers numbers."""
        return {
            **_shown(self),
            "started_at": _shown(self.started_at),
            "completed_at": _shown(self.completed_at),
            "resumption_count": self.resumption_count,
        }

    def get_gpu_hours(self) -> float:
        """GPUs x (left TERMINATING - entered STARTING), summed over resumptions; an open
        resumption counts up to now."""
        now = now_ms()
        return sum(r.gpu_ms(now) for r in self.resumptions) / HOUR_MS

    # --- talking to runplane, through the SDK functions (``RunActions``) ----------------

    def refresh(self) -> Run:
        return _actions().get_run(self.run_uid)

    def stop(self) -> Run:
        return _actions().stop_run(self)

    def delete(self) -> Run:
        return _actions().delete_run(self)

    def start(self) -> Run:
        return _actions().start_run(self)

    def clone(self, **overrides: Any) -> Run:
        """Submit a new run with this run's configuration (fields in ``overrides`` replaced)."""
        base = self.submitted_config
        config = RunConfig(
            **{
                **{k: getattr(base, k) for k in base.__dataclass_fields__},
                **overrides,
            }
        )
        return _actions().create_run(config)

    def update(self, **changes: Any) -> Run:
        return _actions().update_run(self, **changes)

    def update_metadata(self, metadata: dict[str, Any]) -> Run:
        """Merge ``metadata`` into the run's (``update_run_metadata``); the updated Run."""
        return _actions().update_run_metadata(self, metadata)


def _shown(value: Any) -> Any:
    """``value`` as JSON builtins, a dataclass as the fields its ``repr`` shows."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _shown(getattr(value, f.name)) for f in fields(value) if f.repr}
    if isinstance(value, list | tuple):
        return [_shown(item) for item in value]
    return msgspec.to_builtins(value)


class RunActions(Protocol):
    """The SDK functions behind a ``Run``'s methods. ``cli.sdk.runs`` is them; it builds Runs
    with this module, so it is handed in (``bind_actions``, when the SDK is imported) rather
    than imported here."""

    get_run: Callable[..., Run]
    stop_run: Callable[..., Run]
    delete_run: Callable[..., Run]
    start_run: Callable[..., Run]
    create_run: Callable[..., Run]
    update_run: Callable[..., Run]
    update_run_metadata: Callable[..., Run]


_bound: list[RunActions] = []


def bind_actions(actions: RunActions) -> None:
    _bound[:] = [actions]


def _actions() -> RunActions:
    if not _bound:
        raise RuntimeError("a Run's methods need the SDK: import it first (`import mcli`)")
    return _bound[0]


def config_of(spec: RunSpec) -> RunConfig:
    """The RunConfig a RunSpec was validated from."""
    data = msgspec.to_builtins(spec)
    return RunConfig(
        name=spec.name,
        image=spec.image,
        command=spec.command,
        compute=data.get("compute", {}),
        scheduling=data.get("scheduling", {}),
        integrations=list(spec.integrations),
        env_variables=dict(spec.env_variables),
        parameters=dict(spec.parameters),
        metadata=dict(spec.metadata),
    )


def build_run(row: RunRow, attempts: Sequence[AttemptRow]) -> Run:
    """The Run of a run's row and its attempts' rows."""
    spec = row.submitted_config
    requested = spec.compute
    resumptions = [_resumption(row, spec, attempt) for attempt in attempts]
    if not resumptions:  # the attempts' rows lag the run's: show what was asked
        resumptions = [
            Resumption(
                index=0,
                cluster=requested.cluster,
                gpus=requested.gpus,
                cpus=requested.cpus or 0,
                gpu_type=requested.gpu_type,
                node_count=requested.nodes or 1,
                status=row.status,
                started_at=None,
                ended_at=None,
                reason=None,
                opened_at=to_datetime(row.created_at),
            )
        ]
    latest = attempts[-1] if attempts else None
    created = to_datetime(row.created_at)
    updated = to_datetime(row.updated_at)
    assert created is not None
    assert updated is not None
    return Run(
        run_uid=row.run_uid,
        name=row.name,
        status=row.status,
        created_at=created,
        updated_at=updated,
        created_by=row.created_by,
        priority=row.priority,
        preemptible=row.preemptible,
        retry_on_system_failure=row.retry_on_system_failure,
        max_retries=row.max_retries,
        max_duration=row.max_duration,
        cluster=row.cluster,
        gpus=row.gpus,
        gpu_type=row.gpu_type,
        cpus=row.cpus,
        node_count=row.node_count,
        image=row.image,
        submitted_config=config_of(spec),
        metadata=dict(row.metadata),
        is_deleted=row.is_deleted,
        parent=row.parent,
        reason=str(row.reason) if row.reason is not None else None,
        reason_code=row.reason.code if row.reason is not None else None,
        resumptions=resumptions,
        lifecycle=[_phase(attempt, phase) for attempt in attempts for phase in attempt.phases],
        nodes=[
            Node(
                rank=rank.rank,
                name=rank.node,
                status=rank.status,
                reason=rank.reason or None,
                gpus=tuple(rank.gpus),
                exit_code=rank.exit_code,
                gpu_uuids=tuple(rank.gpu_uuids),
                gpu_utilization=rank.gpu_utilization,
                gpu_memory_peak_mib=rank.gpu_memory_peak_mib,
            )
            for rank in (latest.ranks if latest is not None else [])
        ],
        events=[
            RunEvent(
                time=to_datetime(line.time) or created,
                resumption_index=line.attempt,
                text=line.text,
                actor=line.actor,
            )
            for attempt in attempts
            for line in attempt.events
        ],
        first_failed_rank=latest.first_failed_rank if latest is not None else None,
        spec=spec,
    )


def _resumption(row: RunRow, spec: RunSpec, attempt: AttemptRow) -> Resumption:
    requested = spec.compute
    shaped = attempt.node_count > 0  # placed, or queued with the shape the scheduler judged
    return Resumption(
        index=attempt.index,
        cluster=attempt.cluster or requested.cluster,
        gpus=attempt.gpus if shaped else requested.gpus,
        cpus=requested.cpus or 0,
        gpu_type=attempt.gpu_type if shaped else requested.gpu_type,
        node_count=attempt.node_count if shaped else requested.nodes or 1,
        status=attempt.status,
        started_at=to_datetime(attempt.started_at),
        ended_at=to_datetime(attempt.ended_at),
        reason=attempt.reason_text or None,
        opened_at=to_datetime(attempt.opened_at),
        opened_how=attempt.opened_how,
        reason_code=attempt.reason.code if attempt.reason is not None else None,
        started_ms=attempt.started_at,
        ended_ms=attempt.ended_at,
    )


def _phase(attempt: AttemptRow, phase: Phase) -> RunLifecycle:
    final = phase.status.is_terminal() or phase.status is S.TERMINATING
    return RunLifecycle(
        resumption_index=attempt.index,
        status=phase.status,
        started_at=to_datetime(phase.entered_at),
        ended_at=to_datetime(phase.left_at),
        reason=(attempt.reason_text or None) if final else None,
    )
