"""A Pod object, as the API returns it (``kubectl get pod -o json``), as one lifecycle observation.

``observe(pod)`` says where the rank stands; the first rule that matches wins:

1. ``LOST`` (a system failure): the kubelet failed the Pod rather than its command (phase
   ``Failed`` with a Pod-level reason: ``Evicted``, ``Shutdown``, ``UnexpectedAdmissionError``,
   ...), its node is gone (reason ``NodeLost``, phase ``Unknown``; or deleted by the taint
   manager, which does that to the Pods of an unreachable node), or the cluster took it away
   (condition ``DisruptionTarget``: preemption, eviction) and it has ended;
2. ``OOM_KILLED`` / ``EXITED``: the command's container terminated, with its exit code;
3. ``INTEGRATION_FAILED``: an init container (an integration) terminated with a non-zero code;
4. ``PULL_FAILED``: a container cannot get its image (``ErrImagePull``, ``ImagePullBackOff``;
   ``permanent`` for ``InvalidImageName`` and ``ErrImageNeverPull``, which no retry mends);
   ``CONFIG_FAILED``: it cannot be created from its spec (``CreateContainerConfigError``,
   ``CreateContainerError``);
5. ``TERMINATING``: the Pod is being deleted (``deletionTimestamp``) and its command has not
   ended yet;
6. ``RUNNING``: the command's container runs;
7. ``STARTING``: the Pod is on a node (pulling, creating, integrations);
8. ``UNSCHEDULED``: waiting for a node.

Alongside, the facts a tracker needs whatever the rule: whether the image was pulled (some
container of the Pod was created: they all use the run's image), each integration's state, and
whether the command ever started. Pure: no IO; missing fields read as absent, never raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from services.node_agent.kube.manifests import MAIN

PULL_ERRORS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
PERMANENT_PULL_ERRORS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
#: The container cannot be created from its spec (a missing Secret or ConfigMap, runAsNonRoot
#: with an image that runs as root): the kubelet retries forever, as for a pull.
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
NODE_LOST = "NodeLost"
TAINT_EVICTION = "DeletionByTaintManager"  # the node is unreachable or not ready

Json = Mapping[str, Any]


class Lifecycle(StrEnum):
    UNSCHEDULED = "unscheduled"
    STARTING = "starting"
    PULL_FAILED = "pull_failed"
    CONFIG_FAILED = "config_failed"
    RUNNING = "running"
    TERMINATING = "terminating"
    EXITED = "exited"
    OOM_KILLED = "oom_killed"
    INTEGRATION_FAILED = "integration_failed"
    LOST = "lost"


class Init(StrEnum):
    """The state of one integration's init container."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Observation(NamedTuple):
    lifecycle: Lifecycle
    #: Kubernetes' own word for it (``ErrImagePull``, ``OOMKilled``, ``Evicted``, ...), and its
    #: message, for the user.
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    signal: int | None = None
    permanent: bool = False  # PULL_FAILED that no retry mends
    failed_integration: int | None = None
    pulled: bool = False
    integrations: tuple[Init, ...] = ()
    started: bool = False  # the command's container ran (it may have ended since)
    deleting: bool = False
    node: str | None = None  # the Kubernetes node it was scheduled on


def observe(pod: Json) -> Observation:  # noqa: PLR0911 - one return per rule
    metadata: Json = pod.get("metadata") or {}
    spec: Json = pod.get("spec") or {}
    status: Json = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    inits = _statuses(status.get("initContainerStatuses"))
    main = _statuses(status.get("containerStatuses")).get(MAIN, {})
    init_names = [str(c.get("name")) for c in spec.get("initContainers") or []]
    main_state = _state(main)
    started = main_state[0] in ("running", "terminated")
    integrations = tuple(
        Init.DONE if started else _init(_state(inits.get(name, {}))) for name in init_names
    )
    facts: dict[str, Any] = {
        "pulled": started or any(_state(s)[0] != "waiting" for s in inits.values()),
        "integrations": integrations,
        "started": started,
        "deleting": bool(metadata.get("deletionTimestamp")),
        "node": spec.get("nodeName") or None,
    }
    lost = _lost(phase, status, main_state, deleting=facts["deleting"])
    if lost is not None:
        return Observation(Lifecycle.LOST, *lost, **facts)
    kind, detail = main_state
    if kind == "terminated":
        code = detail.get("exitCode")
        reason = str(detail.get("reason") or "")
        return Observation(
            Lifecycle.OOM_KILLED if reason == "OOMKilled" else Lifecycle.EXITED,
            reason,
            str(detail.get("message") or ""),
            exit_code=code if isinstance(code, int) else None,
            signal=detail.get("signal") if isinstance(detail.get("signal"), int) else None,
            **facts,
        )
    for index, name in enumerate(init_names):
        kind, detail = _state(inits.get(name, {}))
        if integrations[index] is Init.FAILED:
            code = detail.get("exitCode")
            reason = str(detail.get("reason") or "Error")
            return Observation(
                Lifecycle.INTEGRATION_FAILED,
                reason,
                str(detail.get("message") or f"{reason}, exit code {code}"),
                exit_code=code if isinstance(code, int) else None,
                failed_integration=index,
                **facts,
            )
    for container in [*inits.values(), main]:
        kind, detail = _state(container)
        reason = str(detail.get("reason") or "")
        if kind == "waiting" and reason in PULL_ERRORS:
            return Observation(
                Lifecycle.PULL_FAILED,
                reason,
                str(detail.get("message") or reason),
                permanent=reason in PERMANENT_PULL_ERRORS,
                **facts,
            )
        if kind == "waiting" and reason in CONFIG_ERRORS:
            message = str(detail.get("message") or reason)
            return Observation(Lifecycle.CONFIG_FAILED, reason, message, **facts)
    if facts["deleting"]:
        return Observation(Lifecycle.TERMINATING, **facts)
    if main_state[0] == "running":
        return Observation(Lifecycle.RUNNING, **facts)
    scheduled = _condition(status, "PodScheduled")
    if facts["node"] or (scheduled or {}).get("status") == "True":
        return Observation(Lifecycle.STARTING, **facts)
    waiting = scheduled or {}
    return Observation(
        Lifecycle.UNSCHEDULED,
        str(waiting.get("reason") or ""),
        str(waiting.get("message") or ""),
        **facts,
    )


def _lost(
    phase: str, status: Json, main_state: tuple[str, Json], *, deleting: bool
) -> tuple[str, str] | None:
    """(reason, message) when the Pod was lost to the system, not ended by its command."""
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    if reason == NODE_LOST or phase == "Unknown":
        return NODE_LOST, message or "the Pod's node stopped reporting its state"
    if phase == "Failed" and reason:
        return reason, message or reason
    disruption = _condition(status, "DisruptionTarget")
    ended = phase in ("Failed", "Succeeded") or main_state[0] == "terminated"
    # The taint manager deletes the Pods of a node that stopped answering: the command may
    # never report its end (nobody is left to), so the deletion itself is the loss.
    taken = ended or (deleting and why_of(disruption) == TAINT_EVICTION)
    if disruption is not None and disruption.get("status") == "True" and taken:
        why = str(disruption.get("reason") or "DisruptionTarget")
        return why, str(disruption.get("message") or why)
    if phase == "Failed" and main_state[0] != "terminated" and not _any_init_failed(status):
        return "PodFailed", message or "the Pod failed before its command ended"
    return None


def why_of(condition: Json | None) -> str:
    return str((condition or {}).get("reason") or "")


def _any_init_failed(status: Json) -> bool:
    return any(
        _init(_state(s)) is Init.FAILED
        for s in _statuses(status.get("initContainerStatuses")).values()
    )


def _statuses(raw: Any) -> dict[str, Json]:
    if not isinstance(raw, Sequence):
        return {}
    return {str(s.get("name")): s for s in raw if isinstance(s, Mapping)}


def _state(container: Json) -> tuple[str, Json]:
    """("waiting" | "running" | "terminated", its details); a container not there yet waits."""
    state = container.get("state") or {}
    for kind in ("terminated", "running", "waiting"):
        detail = state.get(kind)
        if isinstance(detail, Mapping):
            return kind, detail
    return "waiting", {}


def _init(state: tuple[str, Json]) -> Init:
    kind, detail = state
    if kind == "terminated":
        return Init.DONE if detail.get("exitCode") == 0 else Init.FAILED
    return Init.RUNNING if kind == "running" else Init.WAITING


def _condition(status: Json, kind: str) -> Json | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def container_ended(pod: Json | None, name: str) -> bool:
    """Whether container ``name`` of ``pod`` has terminated (a Pod gone: all have)."""
    if pod is None:
        return True
    status: Json = pod.get("status") or {}
    every = {
        **_statuses(status.get("initContainerStatuses")),
        **_statuses(status.get("containerStatuses")),
    }
    return _state(every.get(name, {}))[0] == "terminated"
