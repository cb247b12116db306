"""A rank's Pod over time as the process executor's sequence of events, whatever the agent
happened to see of it."""

from __future__ import annotations

import pytest

from events.lifecycle import AttemptState
from events.model import Reason
from events.status import RunStatus
from services.node_agent.kube.podstatus import observe
from services.node_agent.kube.track import (
    DELETED_ELSEWHERE,
    Ended,
    IntegrationFailed,
    IntegrationFinished,
    IntegrationStarted,
    PullFailed,
    PullFinished,
    PullStarted,
    Running,
    Step,
    Tracker,
    reason,
)
from tests.unit.node_agent.kube.pods import recorded

STOPPED = Reason(category="stopped", code="Stopped", message="stopped by alice")
RUNNING = AttemptState(index=0, status=RunStatus.RUNNING)
STOPPING = AttemptState(index=0, status=RunStatus.TERMINATING, reason=STOPPED)


def feed(tracker: Tracker, *cases: str, now: float = 0.0, stopping: bool = False) -> list[Step]:
    steps: list[Step] = []
    for case in cases:
        steps += tracker.step(observe(recorded(case)), now, stopping=stopping)
    return steps


def test_a_rank_seen_at_every_phase_reports_the_process_executors_sequence() -> None:
    steps = feed(
        Tracker(60),
        "pending-unscheduled", "integration-running", "running", "failed-exit-3", "evicted",
    )  # fmt: skip
    assert steps == [
        PullStarted(), PullFinished(), IntegrationStarted(0), IntegrationFinished(0), Running(),
        Ended(3),
    ]  # fmt: skip


def test_phases_the_agent_missed_are_reported_late_and_in_order() -> None:
    steps = feed(Tracker(60), "succeeded-exit-0")
    assert steps == [
        PullStarted(), PullFinished(), IntegrationStarted(0), IntegrationFinished(0), Running(),
        Ended(0),
    ]  # fmt: skip


def test_a_pod_seen_twice_reports_nothing_twice() -> None:
    tracker = Tracker(60)
    feed(tracker, "running")
    assert feed(tracker, "running", "terminating") == []


def test_a_permanent_pull_failure_fails_at_once() -> None:
    steps = feed(Tracker(300), "container-creating", "invalid-image-name")
    assert steps[:1] == [PullStarted()]
    failed, ended = steps[1:]
    assert isinstance(failed, PullFailed)
    assert "repository name must be lowercase" in failed.error
    assert isinstance(ended, Ended)
    assert (ended.code, ended.category) == ("FailedImagePull", "user")


def test_a_pull_that_keeps_failing_fails_after_the_bound_not_before() -> None:
    tracker = Tracker(pull_backoff_s=300)
    assert feed(tracker, "err-image-pull", now=1000.0) == [PullStarted()]
    assert feed(tracker, "image-pull-backoff", now=1299.0) == []
    failed, ended = feed(tracker, "err-image-pull", now=1300.0)
    assert isinstance(failed, PullFailed)
    assert failed.error.startswith("ErrImagePull: failed to pull and unpack image")
    assert isinstance(ended, Ended)
    assert ended.code == "FailedImagePull"


def test_a_pull_that_recovers_gets_the_whole_bound_again() -> None:
    tracker = Tracker(pull_backoff_s=300)
    feed(tracker, "err-image-pull", now=0.0)
    feed(tracker, "container-creating", now=250.0)  # the registry answered again
    assert feed(tracker, "image-pull-backoff", now=400.0) == []
    assert feed(tracker, "running", now=500.0)[-1] == Running()


def test_a_failed_integration_fails_the_rank_with_the_tools_last_words() -> None:
    steps = feed(Tracker(60), "integration-running", "integration-failed")
    assert steps[:3] == [PullStarted(), PullFinished(), IntegrationStarted(0)]
    failed, ended = steps[3:]
    assert isinstance(failed, IntegrationFailed)
    assert failed.index == 0
    assert "No matching distribution found for einopz" in failed.error
    assert isinstance(ended, Ended)
    assert (ended.code, ended.category) == ("IntegrationFailed", "user")


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("evicted", "Evicted", "low on resource: memory"),
        ("node-lost-unknown", "NodeFailure", "unresponsive"),
        ("node-unreachable-taint-evicted", "NodeFailure", "NoExecute taint"),
    ],
)
def test_a_lost_pod_is_a_system_failure(case: str, code: str, words: str) -> None:
    ended = feed(Tracker(60), "running", case)[-1]
    assert isinstance(ended, Ended)
    got = reason(ended, RUNNING, stopping=False)
    assert got is not None
    assert (got.category, got.code) == ("system", code)
    assert words in got.message


def test_exits_carry_the_reasons_of_the_process_executor() -> None:
    def ended_by(case: str) -> Reason | None:
        ended = feed(Tracker(60), case)[-1]
        assert isinstance(ended, Ended)
        return reason(ended, RUNNING, stopping=False)

    assert ended_by("succeeded-exit-0") is None
    assert ended_by("failed-exit-3") == Reason(
        category="user", code="Error", exit_code=3, message="the command exited with code 3"
    )
    oom = ended_by("oomkilled-exit-137")
    assert oom is not None
    assert (oom.category, oom.code, oom.exit_code) == ("user", "OOMKilled", 137)


def test_a_rank_stopped_by_the_agent_ends_with_the_attempts_reason() -> None:
    tracker = Tracker(60)
    feed(tracker, "running")
    feed(tracker, "terminating", stopping=True)
    pod = recorded("terminating")
    pod["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 143, "reason": "Error"}
    }
    (ended,) = tracker.step(observe(pod), 0.0, stopping=True)
    assert isinstance(ended, Ended)
    assert reason(ended, STOPPING, stopping=True) == STOPPED


def test_a_pod_deleted_by_someone_else_is_a_system_failure() -> None:
    tracker = Tracker(60)
    feed(tracker, "running", "terminating")  # this agent did not ask for it
    pod = recorded("terminating")
    pod["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 143, "reason": "Error"}
    }
    (ended,) = tracker.step(observe(pod), 0.0)
    assert isinstance(ended, Ended)
    got = reason(ended, RUNNING, stopping=False)
    assert got is not None
    assert (got.category, got.code) == ("system", "RankLost")
    assert got.message == f"{DELETED_ELSEWHERE} (exit code 143)"


def test_a_pod_that_vanishes_is_lost_unless_the_agent_deleted_it() -> None:
    stopped = Tracker(60)
    feed(stopped, "running")
    (ended,) = stopped.vanished(stopping=True)
    assert isinstance(ended, Ended)
    assert reason(ended, STOPPING, stopping=True) == STOPPED
    lost = Tracker(60)
    feed(lost, "running")
    (ended,) = lost.vanished(stopping=False)
    assert isinstance(ended, Ended)
    got = reason(ended, RUNNING, stopping=False)
    assert got is not None
    assert (got.category, got.code) == ("system", "RankLost")
    assert lost.vanished(stopping=False) == []  # over is over


def test_nothing_follows_the_end() -> None:
    tracker = Tracker(60)
    feed(tracker, "failed-exit-3")
    assert feed(tracker, "evicted", "running") == []


def test_a_container_that_cannot_be_created_fails_after_the_bound() -> None:
    tracker = Tracker(pull_backoff_s=300)
    assert feed(tracker, "create-container-config-error", now=0.0) == [PullStarted()]
    assert feed(tracker, "create-container-config-error", now=299.0) == []
    (ended,) = feed(tracker, "create-container-config-error", now=300.0)
    assert isinstance(ended, Ended)
    assert (ended.code, ended.category) == ("CreateContainerConfigError", "user")
    assert "runAsNonRoot" in ended.message


def test_a_pod_no_node_takes_fails_as_a_system_failure_after_the_bound() -> None:
    tracker = Tracker(pull_backoff_s=300, unschedulable_s=600)
    assert feed(tracker, "pending-unscheduled", now=0.0) == []
    assert feed(tracker, "pending-unscheduled", now=599.0) == []
    (ended,) = feed(tracker, "pending-unscheduled", now=600.0)
    assert isinstance(ended, Ended)
    assert (ended.code, ended.category) == ("Unschedulable", "system")
    assert "600 s" in ended.message


def test_a_pod_scheduled_in_time_gets_no_unschedulable_end() -> None:
    tracker = Tracker(pull_backoff_s=300, unschedulable_s=600)
    feed(tracker, "pending-unscheduled", now=0.0)
    assert feed(tracker, "container-creating", now=599.0) == [PullStarted()]
    assert feed(tracker, "running", now=2000.0)[-1] == Running()
