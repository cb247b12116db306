"""Every event on runplane's log, as msgspec Structs in one tagged union.

Invariants:
- A tag (``attempt.scheduled``) is permanent. ``VERSION`` is the schema version of that tag;
  adding an optional field needs no bump, a rename or a type change does, with an upcaster in
  ``events.codec`` and a recorded sample of the old shape under ``tests/golden/``.
- ``time`` (milliseconds since the epoch) and the log position are stamped by the log when the
  event is appended, from the server's clock; a writer leaves ``time`` at 0.
- Users and their API keys are an aggregate per user (``user:<name>``): a key's events live
  in its owner's history, so issuing and revoking append on the user's expected version.
  Only a key's hash is ever in an event, never the key; the same holds for a run's tokens
  (``attempt.token_issued``), and what shows events to people leaves the hash out
  (``SECRET_FIELDS``).
- A user's secrets are in their aggregate too, by name and type only (``secret.created``,
  ``secret.deleted``): the log is immutable and a deleted secret's value must be gone, so no
  value, no part of one and nothing derived from one (a hash, a length) is ever in an event;
  the values live encrypted beside the log (``services.core.secretstore``).
- Events say what happened. What somebody asks for is a command (``events.commands``); the
  ``*Requested`` events record that a request was accepted, and by whom.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from events.spec import Priority, RunSpec

ReasonCategory = Literal["user", "system", "preempted", "stopped"]
Role = Literal["user", "admin"]
#: The kinds of secret a user keeps (``events.secrets``; mcli's ``docker``, ``env``, ...).
SecretType = Literal["docker", "env", "mounted", "ssh", "git", "s3", "gcp", "hf"]


#: Codes whose message is part of the reason's one line: which GPU, and what failed it.
SELF_EXPLAINED = frozenset({"GpuFailure"})


class Reason(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Why an attempt ended (or is ending): a category, a code and the details."""

    category: ReasonCategory
    code: str  # FailedImagePull, Error, OOMKilled, NodeFailure, Preempted, StoppedByUser, ...
    message: str = ""
    exit_code: int | None = None
    failed_rank: int | None = None

    def __str__(self) -> str:
        if self.code == "Error" and self.exit_code is not None:
            return f"Error (exit code {self.exit_code})"
        if self.code in SELF_EXPLAINED and self.message:
            return f"{self.code}: {self.message}"  # GpuFailure: Xid 79 on GPU 3 (GPU-...)
        return self.code


class RankPlacement(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One rank of an attempt: the node it runs on and the GPU indices it holds there, and
    (placed since GPUs have UUIDs in the log) those GPUs' UUIDs, in the same order: which
    physical GPUs an attempt used, for RMA triage. Empty in placements recorded before."""

    rank: int
    node: str
    gpus: list[int]
    gpu_uuids: list[str] = msgspec.field(default_factory=list)


class Via(msgspec.Struct, kw_only=True, frozen=True):
    """The run attempt whose token made a request on behalf of its owner (``actor``)."""

    run_id: str
    run: str  # the run's name
    attempt: int

    def __str__(self) -> str:
        return f"run {self.run} attempt {self.attempt}"


class Event(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    """The envelope every event carries."""

    VERSION: ClassVar[int] = 1

    id: str
    actor: str  # a user, or ``service@host``
    via: Via | None = None  # set when a run's own token asked, on behalf of ``actor``
    time: int = 0  # stamped by the log (ms since the epoch, the server's clock)
    causation_id: str | None = None  # the event that caused this one
    correlation_id: str | None = None  # the request this event belongs to

    @property
    def aggregate(self) -> str:  # pragma: no cover - every concrete base overrides it
        raise NotImplementedError


def run_aggregate(run_id: str) -> str:
    """The aggregate of run ``run_id``: what names its history and its keys."""
    return f"{_RUN}{run_id}"


_RUN = "run:"


def is_run(aggregate: str) -> bool:
    """Whether ``aggregate`` is a run's: the only histories the archiver retires (a run's at
    rest); a node's or a user's stays on the server."""
    return aggregate.startswith(_RUN)


class RunEvent(Event, kw_only=True):
    """An event of one run; ``attempt`` is the attempt (mcli: resumption) index, from 0."""

    run_id: str
    attempt: int = 0

    @property
    def aggregate(self) -> str:
        return run_aggregate(self.run_id)


class NodeEvent(Event, kw_only=True):
    """An event of one node of a cluster."""

    node: str
    cluster: str

    @property
    def aggregate(self) -> str:
        return f"node:{self.node}"


class UserEvent(Event, kw_only=True):
    """An event of one user and their API keys; ``actor`` is the admin who did it (or
    ``runplane@setup`` for the admin that a new deployment starts with)."""

    user: str

    @property
    def aggregate(self) -> str:
        return f"user:{self.user}"


# --- a run and its requests -------------------------------------------------------------


class RunSubmitted(RunEvent, kw_only=True, tag="run.submitted"):
    """A run was created; its attempt 0 is PENDING. ``actor`` is the user. ``parent`` names the
    run it was submitted from (mcli's ``parentName``), when it was."""

    name: str  # the unique run name, base name plus random suffix
    spec: RunSpec
    parent: str | None = None


class StopRequested(RunEvent, kw_only=True, tag="run.stop_requested"):
    reason: str = ""


class RestartRequested(RunEvent, kw_only=True, tag="run.restart_requested"):
    """Opens attempt ``attempt`` (PENDING); the previous attempt was terminal."""


#: What an update may change, as ``Scheduling`` names them.
_UPDATABLE = ("priority", "preemptible", "max_retries", "retry_on_system_failure", "max_duration")


class UpdateRequested(RunEvent, kw_only=True, tag="run.update_requested"):
    """Scheduling fields changed; ``None`` means unchanged."""

    priority: Priority | None = None
    preemptible: bool | None = None
    max_retries: int | None = None
    retry_on_system_failure: bool | None = None
    max_duration: float | None = None

    def changes(self) -> dict[str, Any]:
        """The fields it changes, by their ``Scheduling`` names, in declaration order."""
        changed = msgspec.structs.asdict(self)
        return {field: changed[field] for field in _UPDATABLE if changed[field] is not None}


class MetadataUpdated(RunEvent, kw_only=True, tag="run.metadata_updated"):
    """The run's metadata, merged: the keys given take these values, the others stay."""

    metadata: dict[str, Any]


class DeleteRequested(RunEvent, kw_only=True, tag="run.delete_requested"):
    pass


class RunDeleted(RunEvent, kw_only=True, tag="run.deleted"):
    """The run is gone from listings; its history stays in the log, audit and billing."""


class RetryScheduled(RunEvent, kw_only=True, tag="run.retry_scheduled"):
    """The scheduler opened attempt ``attempt`` (PENDING) after the previous one ended."""

    cause: Literal["user_failure", "system_failure", "preempted"]


# --- an attempt through its lifecycle ----------------------------------------------------


class AttemptQueued(RunEvent, kw_only=True, tag="attempt.queued"):
    """The attempt waits in its cluster's queue; ``nodes`` (0: not known yet), ``gpus`` and
    ``gpu_type`` are the shape the scheduler judged the request by (``events.fit``)."""

    reason: str = ""
    position: int = 0
    nodes: int = 0
    gpus: int = 0
    gpu_type: str | None = None


class AttemptScheduled(RunEvent, kw_only=True, tag="attempt.scheduled"):
    """The attempt holds GPUs from now on: it enters STARTING."""

    VERSION: ClassVar[int] = 2

    cluster: str
    gpu_type: str | None = None
    ranks: list[RankPlacement]


class ImagePullStarted(RunEvent, kw_only=True, tag="image.pull_started"):
    rank: int
    node: str
    image: str


class ImagePullFinished(RunEvent, kw_only=True, tag="image.pull_finished"):
    rank: int
    node: str
    image: str
    #: What the pull measured, where the executor pulls itself (``container``): the image's
    #: size as the engine stores it, and the pull's duration (a cached image: the manifest's
    #: round trip). None where it is not known (``process``, ``kubernetes``).
    size_bytes: int | None = None
    duration_ms: int | None = None


class ImagePullFailed(RunEvent, kw_only=True, tag="image.pull_failed"):
    rank: int
    node: str
    image: str
    error: str


class IntegrationStarted(RunEvent, kw_only=True, tag="integration.started"):
    rank: int
    node: str
    index: int
    integration_type: str


class IntegrationFinished(RunEvent, kw_only=True, tag="integration.finished"):
    rank: int
    node: str
    index: int
    integration_type: str


class IntegrationFailed(RunEvent, kw_only=True, tag="integration.failed"):
    rank: int
    node: str
    index: int
    integration_type: str
    error: str


class RankRunning(RunEvent, kw_only=True, tag="rank.running"):
    """The rank's command started."""

    rank: int
    node: str
    pid: int | None = None


class RunTokenIssued(RunEvent, kw_only=True, tag="attempt.token_issued"):
    """A token for rank ``rank`` of the attempt, with which the rank's code speaks to the API as
    its run (``events.tokens``): its id and the SHA-256 of its secret as lowercase hex. The
    token works until the attempt ends; the node-agent that drew it wrote it to a file only the
    rank reads, and it is stored nowhere else."""

    rank: int
    node: str
    token_id: str
    token_hash: str


class AttemptRunning(RunEvent, kw_only=True, tag="attempt.running"):
    """Every rank runs its command: the attempt enters RUNNING."""


class RankExited(RunEvent, kw_only=True, tag="rank.exited"):
    """The rank released its GPUs. ``exit_code`` is None when no process ever ran."""

    rank: int
    node: str
    exit_code: int | None = None
    signal: int | None = None
    reason: Reason | None = None
    #: How busy its GPUs were, as the node's NVML samples saw them while it ran: mean
    #: utilization (%) and peak memory used (MiB, the most of any one of its GPUs). None where
    #: nothing was sampled (simulated GPUs, a rank shorter than one sample, an adopted rank).
    gpu_utilization: int | None = None
    gpu_memory_peak_mib: int | None = None

    @property
    def ending(self) -> str:
        """How the rank ended, in words: "exited with code 3", "ended by signal 15", or
        "ended without an exit code" (no process ran, or it was lost)."""
        if self.exit_code is not None:
            return f"exited with code {self.exit_code}"
        if self.signal is not None:
            return f"ended by signal {self.signal}"
        return "ended without an exit code"


class AttemptTerminating(RunEvent, kw_only=True, tag="attempt.terminating"):
    """The attempt is winding down; ``reason`` is None when every rank exited 0."""

    reason: Reason | None = None


class AttemptCompleted(RunEvent, kw_only=True, tag="attempt.completed"):
    pass


class AttemptStopped(RunEvent, kw_only=True, tag="attempt.stopped"):
    reason: Reason


class AttemptFailed(RunEvent, kw_only=True, tag="attempt.failed"):
    reason: Reason


def begins_history(event: Event) -> bool:
    """Whether ``event`` may be the first of its aggregate's history where the server holds
    none: a run's submission (its id is new), or any event of an aggregate never retired
    (``is_run``). Any other event of a run with no stream is for one whose history may be in
    the archive, and is appended only once the writer has looked there (``append.lua``)."""
    return isinstance(event, RunSubmitted) or not is_run(event.aggregate)


#: The events that end an attempt: it holds no GPU after one.
ATTEMPT_ENDS: frozenset[type[RunEvent]] = frozenset(
    {AttemptCompleted, AttemptStopped, AttemptFailed}
)

# --- nodes --------------------------------------------------------------------------------


class NodeRegistered(NodeEvent, kw_only=True, tag="node.registered"):
    gpu_type: str | None
    gpus: int
    cpus: int = 0
    #: The GPUs' UUIDs by index (``GPU-simulated-...`` for simulated ones); empty in
    #: registrations recorded before.
    gpu_uuids: list[str] = msgspec.field(default_factory=list)
    #: How the node keeps ranks from itself and from each other (its executor's one line);
    #: empty in registrations recorded before.
    isolation: str = ""


class NodeLost(NodeEvent, kw_only=True, tag="node.lost"):
    last_seen: int  # ms since the epoch, from the node's last heartbeat


class NodeDrained(NodeEvent, kw_only=True, tag="node.drained"):
    """The node is out of service at once: its attempts are ended now (``NodeDrained``)."""

    reason: str = ""


class NodeCordoned(NodeEvent, kw_only=True, tag="node.cordoned"):
    """An admin (``actor``) took the node out of placement: nothing new goes there, what runs
    on it runs on. Only ``node.uncordoned`` ends it (a re-registration does not)."""

    reason: str


class NodeDrainRequested(NodeEvent, kw_only=True, tag="node.drain_requested"):
    """An admin asked the node to be emptied: cordoned, and every attempt still on it at
    ``time + grace_ms`` (the log's clock) is ended with a system reason naming the drain
    (``NodeDrained``); None waits for them to end by themselves."""

    reason: str
    grace_ms: int | None = None


class NodeUncordoned(NodeEvent, kw_only=True, tag="node.uncordoned"):
    """An admin put the node back into placement (ends a cordon, a drain or ``node.drained``)."""


class NodeGpuFailed(NodeEvent, kw_only=True, tag="node.gpu_failed"):
    """The node's agent saw GPU ``gpu`` fail (NVML: a critical Xid, uncorrectable ECC errors,
    retired pages pending, the GPU lost). Nothing is placed on it until the node registers
    again (an agent restarted after the GPU was reset or replaced, which watches it anew);
    an attempt holding it ends, a system failure."""

    gpu: int
    gpu_uuid: str
    error: str  # "Xid 79", "uncorrectable ECC errors: 2", "retired pages pending", "GPU lost"

    @property
    def what(self) -> str:
        """``Xid 79 on GPU 3 (GPU-...)``."""
        return f"{self.error} on GPU {self.gpu} ({self.gpu_uuid})"


# --- users and their API keys ---------------------------------------------------------------


class UserAdded(UserEvent, kw_only=True, tag="user.added"):
    role: Role


class KeyIssued(UserEvent, kw_only=True, tag="key.issued"):
    """An API key of ``user``: its id (public, shown in listings) and the SHA-256 of its secret
    as lowercase hex (``events.identity``); the key itself is shown once and stored nowhere."""

    key_id: str
    key_hash: str
    expires_at: int | None = None  # ms since the epoch; the key is refused from then on


class KeyRevoked(UserEvent, kw_only=True, tag="key.revoked"):
    key_id: str


class RequestRefused(UserEvent, kw_only=True, tag="request.refused"):
    """The API refused ``user`` (the key's owner, also the actor) a request: what they asked
    (``request``: an ``events.access.Action`` or an admin's command) of what (``target``: a run
    as named, or a user), the answer's code and why. Recorded for runs that exist and for
    admins' commands, so the audit shows who tried what they may not."""

    request: str
    target: str
    code: int
    why: str
    run_id: str | None = None


class SecretCreated(UserEvent, kw_only=True, tag="secret.created"):
    """``user`` keeps a secret of this name and type from now on; ``actor`` is the user (their
    key's owner). The event's ``id`` is the secret's id: its sealed value records it, so a value
    is known for this secret's and no other's (``events.secrets``). Never a value."""

    name: str
    secret_type: SecretType


class SecretDeleted(UserEvent, kw_only=True, tag="secret.deleted"):
    """``user``'s secret ``name`` is gone, its value with it; ``actor`` is the user, or an admin
    who named them."""

    name: str
    secret_type: SecretType


AnyRunEvent = (
    RunSubmitted
    | StopRequested
    | RestartRequested
    | UpdateRequested
    | MetadataUpdated
    | DeleteRequested
    | RunDeleted
    | RetryScheduled
    | AttemptQueued
    | AttemptScheduled
    | ImagePullStarted
    | ImagePullFinished
    | ImagePullFailed
    | IntegrationStarted
    | IntegrationFinished
    | IntegrationFailed
    | RankRunning
    | RunTokenIssued
    | AttemptRunning
    | RankExited
    | AttemptTerminating
    | AttemptCompleted
    | AttemptStopped
    | AttemptFailed
)
AnyNodeEvent = (
    NodeRegistered
    | NodeLost
    | NodeDrained
    | NodeCordoned
    | NodeDrainRequested
    | NodeUncordoned
    | NodeGpuFailed
)
AnyUserEvent = UserAdded | KeyIssued | KeyRevoked | RequestRefused | SecretCreated | SecretDeleted
AnyEvent = AnyRunEvent | AnyNodeEvent | AnyUserEvent

ALL_EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__
RUN_EVENT_TYPES: tuple[type[Event], ...] = AnyRunEvent.__args__
NODE_EVENT_TYPES: tuple[type[Event], ...] = AnyNodeEvent.__args__
USER_EVENT_TYPES: tuple[type[Event], ...] = AnyUserEvent.__args__


#: Fields that hold a secret's hash: kept in the log, left out wherever events are shown.
SECRET_FIELDS: dict[type[Event], frozenset[str]] = {
    KeyIssued: frozenset({"key_hash"}),
    RunTokenIssued: frozenset({"token_hash"}),
}


def redacted(event: AnyEvent) -> AnyEvent:
    """``event`` with its secret hashes blanked (``SECRET_FIELDS``), as it may be shown."""
    secret = SECRET_FIELDS.get(type(event))
    if not secret:
        return event
    return msgspec.structs.replace(event, **dict.fromkeys(secret, ""))


def tag_of(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
