"""One rank's Pod, observed again and again, as the events to report: the same sequence the
``process`` executor reports, so the scheduler cannot tell the executors apart.

``Tracker.step(observation, now)`` returns what is new since the last step, in order:

    PullStarted (the Pod is on a node) -> PullFinished (a container was created) ->
    IntegrationStarted i -> IntegrationFinished i ... -> Running (the command's container runs)
    -> Ended

Steps the agent did not see (it was down, or the Pod moved on between two observations) are
reported late and in order, never skipped: a rank observed exited still reports each
integration's end and its start first. ``Ended`` comes once and is the last step:

- the command exited (``EXITED``, ``OOM_KILLED``), with its exit code;
- an integration failed, the image could not be pulled (at once for ``permanent`` errors, after
  ``pull_backoff_s`` of failing for the others: Kubernetes itself retries forever), the
  container could not be created from its spec for as long (user ``CreateContainerConfigError``
  and the like), no Kubernetes node took the Pod within ``unschedulable_s`` (system
  ``Unschedulable``: nothing stays STARTING forever), or the Pod was lost (evicted, its node
  gone);
- the Pod vanished (``vanished``) before anything else ended it.

``reason`` turns an ``Ended`` into the reason ``rank.exited`` carries, from the attempt's state
when it is reported: a rank that ended because the agent was told to stop it carries the
attempt's reason (as on the ``process`` executor); a Pod deleted by someone else ends as a
system failure, since the rank did not fail by its own doing.

Pure: time comes in as ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

from dataclasses import dataclass

from events.lifecycle import AttemptState
from events.model import Reason, ReasonCategory
from services.node_agent.job import ExitStatus
from services.node_agent.kube.podstatus import (
    NODE_LOST,
    TAINT_EVICTION,
    Init,
    Lifecycle,
    Observation,
)
from services.node_agent.plan import exit_reason

DELETED_ELSEWHERE = "its Pod was deleted outside runplane"
VANISHED = "its Pod disappeared before its command ended"


@dataclass(frozen=True)
class PullStarted:
    pass


@dataclass(frozen=True)
class PullFinished:
    pass


@dataclass(frozen=True)
class PullFailed:
    error: str


@dataclass(frozen=True)
class IntegrationStarted:
    index: int


@dataclass(frozen=True)
class IntegrationFinished:
    index: int


@dataclass(frozen=True)
class IntegrationFailed:
    index: int
    error: str


@dataclass(frozen=True)
class Running:
    pass


@dataclass(frozen=True)
class Ended:
    """The rank is over. ``code`` is the reason code of a failure the executor decides
    (``FailedImagePull``, ``IntegrationFailed``, ``OOMKilled``, ``Evicted``, ``NodeFailure``,
    ``RankLost``); None for the command's own exit, judged by its exit code."""

    exit_code: int | None
    code: str | None = None
    category: ReasonCategory = "user"
    message: str = ""
    signal: int | None = None
    #: Deleted by someone other than this agent before it ended.
    deleted_elsewhere: bool = False


Step = (
    PullStarted
    | PullFinished
    | PullFailed
    | IntegrationStarted
    | IntegrationFinished
    | IntegrationFailed
    | Running
    | Ended
)


class Tracker:
    def __init__(self, pull_backoff_s: float, unschedulable_s: float = 600.0) -> None:
        self.pull_backoff_s = pull_backoff_s
        self.unschedulable_s = unschedulable_s
        self.pull_started = False
        self.pull_finished = False
        self.integrations_started = 0  # integrations 0..n-1 were reported started
        self.integrations_finished = 0
        self.running = False
        self.ended = False
        self.stuck: tuple[Lifecycle, float] | None = None  # waiting how, since when
        self.deleted_elsewhere = False

    def step(self, seen: Observation, now: float, *, stopping: bool = False) -> list[Step]:
        """What ``seen`` adds; ``stopping``: this agent asked for the Pod's deletion."""
        if self.ended:
            return []
        if seen.deleting and not stopping and not self.deleted_elsewhere:
            self.deleted_elsewhere = True
        steps: list[Step] = []
        life = seen.lifecycle
        if life is not Lifecycle.UNSCHEDULED and not self.pull_started:
            self.pull_started = True
            steps.append(PullStarted())
        if seen.pulled and not self.pull_finished:
            self.pull_finished = True
            steps.append(PullFinished())
        if self.pull_finished:
            steps += self._integrations(seen.integrations)
        if seen.started and not self.running:
            self.running = True
            steps.append(Running())
        ending = self._ending(seen, now)
        if ending:
            self.ended = True
            steps += ending
        return steps

    def vanished(self, *, stopping: bool) -> list[Step]:
        """The Pod is gone (deleted and finished, or deleted while its node was gone)."""
        if self.ended:
            return []
        self.ended = True
        if stopping and not self.deleted_elsewhere:
            return [Ended(exit_code=None)]  # told to stop: the attempt's reason says why
        return [Ended(None, "RankLost", "system", VANISHED, deleted_elsewhere=True)]

    def _integrations(self, states: tuple[Init, ...]) -> list[Step]:
        steps: list[Step] = []
        for index, state in enumerate(states):
            if state is Init.WAITING:
                break
            if index >= self.integrations_started:
                self.integrations_started = index + 1
                steps.append(IntegrationStarted(index))
            if state is Init.DONE and index >= self.integrations_finished:
                self.integrations_finished = index + 1
                steps.append(IntegrationFinished(index))
            if state is not Init.DONE:
                break
        return steps

    def _ending(self, seen: Observation, now: float) -> list[Step]:  # noqa: PLR0911
        """The last steps, if ``seen`` ends the rank."""
        life = seen.lifecycle
        elsewhere = self.deleted_elsewhere
        if life is Lifecycle.LOST:
            node_gone = seen.reason in (NODE_LOST, TAINT_EVICTION)
            code = "NodeFailure" if node_gone else seen.reason
            message = f"{seen.reason}: {seen.message}" if seen.message else seen.reason
            return [Ended(seen.exit_code, code, "system", message)]
        if life is Lifecycle.OOM_KILLED:
            message = f"the command ran out of memory and was killed (exit code {seen.exit_code})"
            return [
                Ended(seen.exit_code, "OOMKilled", "user", message, deleted_elsewhere=elsewhere)
            ]
        if life is Lifecycle.EXITED:
            exit_code, signal = seen.exit_code, seen.signal
            return [Ended(exit_code, signal=signal, deleted_elsewhere=elsewhere)]
        if life is Lifecycle.INTEGRATION_FAILED:
            assert seen.failed_integration is not None
            failed = IntegrationFailed(seen.failed_integration, seen.message)
            return [failed, Ended(None, "IntegrationFailed", "user", seen.message)]
        bound = {
            Lifecycle.PULL_FAILED: self.pull_backoff_s,
            Lifecycle.CONFIG_FAILED: self.pull_backoff_s,
            Lifecycle.UNSCHEDULED: self.unschedulable_s,
        }.get(life)
        if bound is None:
            self.stuck = None  # a wait that ended gets the whole bound again next time
            return []
        if self.stuck is None or self.stuck[0] is not life:
            self.stuck = (life, now)
        if not seen.permanent and now - self.stuck[1] < bound:
            return []
        error = f"{seen.reason}: {seen.message}" if seen.message else seen.reason
        if life is Lifecycle.PULL_FAILED:
            return [PullFailed(error), Ended(None, "FailedImagePull", "user", error)]
        if life is Lifecycle.CONFIG_FAILED:
            return [Ended(None, seen.reason, "user", error)]
        why = f"no Kubernetes node took its Pod in {bound:g} s ({error or 'no reason given'})"
        return [Ended(None, "Unschedulable", "system", why)]


def reason(ended: Ended, attempt: AttemptState, *, stopping: bool) -> Reason | None:
    """The reason ``rank.exited`` carries for ``ended``; None for a clean exit (code 0)."""
    if ended.code is not None:
        return Reason(
            category=ended.category,
            code=ended.code,
            message=ended.message,
            exit_code=ended.exit_code,
        )
    if ended.deleted_elsewhere and not stopping and ended.exit_code != 0:
        how = f" (exit code {ended.exit_code})" if ended.exit_code is not None else ""
        return Reason(category="system", code="RankLost", message=DELETED_ELSEWHERE + how)
    status = ExitStatus(exit_code=ended.exit_code, signal=ended.signal, stopped=stopping)
    return exit_reason(status, attempt)
