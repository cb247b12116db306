"""Every recorded Pod state maps onto the lifecycle as the executor must report it."""

from __future__ import annotations

import kubernetes_validate
import pytest

from services.node_agent.kube.podstatus import Init, Lifecycle, observe
from tests.unit.node_agent.kube.pods import CASES, recorded

L = Lifecycle

#: case -> (lifecycle, Kubernetes' reason, exit code)
EXPECTED = {
    "pending-unscheduled": (L.UNSCHEDULED, "Unschedulable", None),
    "container-creating": (L.STARTING, "", None),
    "create-container-config-error": (L.CONFIG_FAILED, "CreateContainerConfigError", None),
    "integration-running": (L.STARTING, "", None),
    "integration-failed": (L.INTEGRATION_FAILED, "Error", 1),
    "err-image-pull": (L.PULL_FAILED, "ErrImagePull", None),
    "image-pull-backoff": (L.PULL_FAILED, "ImagePullBackOff", None),
    "invalid-image-name": (L.PULL_FAILED, "InvalidImageName", None),
    "running": (L.RUNNING, "", None),
    "succeeded-exit-0": (L.EXITED, "Completed", 0),
    "failed-exit-3": (L.EXITED, "Error", 3),
    "oomkilled-exit-137": (L.OOM_KILLED, "OOMKilled", 137),
    "terminating": (L.TERMINATING, "", None),
    "evicted": (L.LOST, "Evicted", None),
    "node-lost-unknown": (L.LOST, "NodeLost", None),
    "node-unreachable-taint-evicted": (L.LOST, "DeletionByTaintManager", None),
}


def test_every_recorded_case_is_expected() -> None:
    assert sorted(EXPECTED) == CASES


@pytest.mark.parametrize("case", CASES)
def test_the_recorded_pods_are_real_pods(case: str) -> None:
    kubernetes_validate.validate(recorded(case), "1.34", strict=True)


@pytest.mark.parametrize("case", CASES)
def test_each_pod_state_maps_onto_the_lifecycle(case: str) -> None:
    seen = observe(recorded(case))
    assert (seen.lifecycle, seen.reason, seen.exit_code) == EXPECTED[case]


def test_an_unschedulable_pod_says_why() -> None:
    seen = observe(recorded("pending-unscheduled"))
    assert "Insufficient nvidia.com/gpu" in seen.message
    assert (seen.node, seen.pulled, seen.started) == (None, False, False)
    assert seen.integrations == (Init.WAITING,)


def test_a_scheduled_pod_is_pulling_until_a_container_is_created() -> None:
    creating = observe(recorded("container-creating"))
    assert (creating.node, creating.pulled) == ("gpu-node-7", False)
    setup = observe(recorded("integration-running"))
    assert (setup.pulled, setup.integrations, setup.started) == (True, (Init.RUNNING,), False)


@pytest.mark.parametrize(
    ("case", "permanent"),
    [("err-image-pull", False), ("image-pull-backoff", False), ("invalid-image-name", True)],
)
def test_only_an_invalid_image_name_is_a_permanent_pull_failure(case: str, permanent: bool) -> None:
    seen = observe(recorded(case))
    assert seen.permanent is permanent
    assert seen.message  # the registry's (or the parser's) own words reach the user


def test_a_failed_integration_carries_its_index_and_last_output() -> None:
    seen = observe(recorded("integration-failed"))
    assert seen.failed_integration == 0
    assert "No matching distribution found for einopz" in seen.message
    assert seen.integrations == (Init.FAILED,)


def test_an_ended_command_has_started_and_finished_its_integrations() -> None:
    for case in ("succeeded-exit-0", "failed-exit-3", "oomkilled-exit-137", "running"):
        seen = observe(recorded(case))
        assert (seen.started, seen.pulled, seen.integrations) == (True, True, (Init.DONE,))


def test_deletion_of_a_running_pod_is_terminating_until_its_command_ends() -> None:
    pod = recorded("terminating")
    assert observe(pod).deleting
    pod["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 143, "reason": "Error", "startedAt": "2025-05-14T09:14:09Z",
                       "finishedAt": "2025-05-14T10:40:14Z"},
    }  # fmt: skip
    seen = observe(pod)
    assert (seen.lifecycle, seen.exit_code, seen.deleting) == (L.EXITED, 143, True)


def test_lost_pods_say_why_in_the_kubelets_words() -> None:
    assert "low on resource: memory" in observe(recorded("evicted")).message
    assert "unresponsive" in observe(recorded("node-lost-unknown")).message


def test_a_preempted_pod_is_lost_once_its_command_ended() -> None:
    pod = recorded("failed-exit-3")
    pod["status"]["conditions"].append(
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
         "message": "default-scheduler: preempting to accommodate a higher priority pod",
         "lastProbeTime": None, "lastTransitionTime": "2025-05-14T11:02:50Z"},
    )  # fmt: skip
    seen = observe(pod)
    assert (seen.lifecycle, seen.reason) == (L.LOST, "PreemptionByScheduler")


def test_a_pod_with_no_status_yet_waits_for_a_node() -> None:
    pod = recorded("pending-unscheduled")
    del pod["status"]
    assert observe(pod).lifecycle is L.UNSCHEDULED
