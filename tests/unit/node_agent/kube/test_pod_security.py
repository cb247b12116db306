"""A rank's Pod cannot act as anything but the rank (issue 20): no service-account token, and
the "restricted" Pod Security Standard met by every Pod the executor builds, with the options
its default settings give; root only when a platform team asks for it."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from services.node_agent.kube import manifests, secretobjects
from services.node_agent.kube.executor import pod_options
from services.node_agent.kube.manifests import PodOptions
from services.node_agent.settings import NodeAgentSettings
from tests.unit.node_agent.kube import podsecurity
from tests.unit.node_agent.kube.test_manifests import GIT, K8S, PIP, SECRETS, job

API_URL = "http://runplane-api.ml.svc:8765/graphql"


def options(**settings: Any) -> PodOptions:
    """The Pod options of an agent with these settings, as the executor makes them."""
    return pod_options(
        NodeAgentSettings(node="gpu-node-7", gpus=0, executor="kubernetes",
                          kube_namespace="ml", **settings)
    )  # fmt: skip


def pods(opts: PodOptions) -> dict[str, dict[str, Any]]:
    """Every kind of Pod the executor builds, by name."""
    image = "reg.example:5000/team/trainer:1"
    with_secrets = job(image=image)
    layout = secretobjects.layout(with_secrets.key, SECRETS, image)
    with_api = opts._replace(api_url=API_URL)
    return {
        "plain": manifests.pod(job(integrations=[]), opts),
        "no gpus": manifests.pod(job(gpus=(), integrations=[]), opts),
        "integrations": manifests.pod(job(integrations=[GIT, PIP]), opts),
        "secrets": manifests.pod(with_secrets, opts, layout),
        "token": manifests.pod(job(integrations=[]), with_api),
        "everything": manifests.pod(with_secrets, with_api, layout),
    }


DEFAULT = pods(options())
ROOT = pods(options(kube_run_as_user=0))


@pytest.mark.parametrize("kind", sorted(DEFAULT))
def test_every_pod_meets_the_restricted_pod_security_standard(kind: str) -> None:
    pod = DEFAULT[kind]
    assert podsecurity.violations(pod) == []
    kubernetes_validate.validate(pod, K8S, strict=True)


@pytest.mark.parametrize("kind", sorted(DEFAULT))
def test_no_pod_gets_a_service_account_token(kind: str) -> None:
    assert DEFAULT[kind]["spec"]["automountServiceAccountToken"] is False
    assert ROOT[kind]["spec"]["automountServiceAccountToken"] is False


def test_every_container_runs_as_the_settings_uid_without_privileges() -> None:
    pod = DEFAULT["everything"]
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    names = []
    for where, container in podsecurity.containers(pod["spec"]):
        names.append(where)
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
        }, where  # fmt: skip
    assert names == ["initContainers[integration-0]", "initContainers[integration-1]",
                     "containers[rank]"]  # fmt: skip
    other = manifests.pod(job(), options(kube_run_as_user=4242))["spec"]["securityContext"]
    assert (other["runAsUser"], other["runAsGroup"], other["fsGroup"]) == (4242, 4242, 4242)


@pytest.mark.parametrize("kind", sorted(ROOT))
def test_an_image_that_needs_root_gets_it_and_stays_within_baseline(kind: str) -> None:
    pod = ROOT[kind]
    assert list(podsecurity.baseline(pod)) == []
    where = [name for name, _ in podsecurity.containers(pod["spec"])]
    assert podsecurity.violations(pod) == [
        "runAsNonRoot: pod sets false", "runAsUser: pod runs as 0",
        *(f"runAsNonRoot: {name}" for name in where),
    ]  # fmt: skip
    kubernetes_validate.validate(pod, K8S, strict=True)


def test_a_uid_the_image_does_not_know_gets_the_rank_directory_as_home() -> None:
    def homes(pod: dict[str, Any]) -> list[str | None]:
        return [
            next((e.get("value") for e in c["env"] if e["name"] == "HOME"), None)
            for _, c in podsecurity.containers(pod["spec"])
        ]

    assert homes(DEFAULT["integrations"]) == ["/runplane"] * 3
    assert homes(ROOT["integrations"]) == [None] * 3  # root's own, from the image
    own = manifests.pod(job(env_variables={"HOME": "/work"}), options())
    assert homes(own) == ["/work"] * 3  # the run's wins


def test_the_settings_refuse_a_negative_uid() -> None:
    with pytest.raises(ValueError, match="kube_run_as_user"):
        options(kube_run_as_user=-1)


# --- the checker has teeth --------------------------------------------------------------------

BAD_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "bad",
        "annotations": {"container.apparmor.security.beta.kubernetes.io/x": "unconfined"},
    },
    "spec": {
        "hostNetwork": True,
        "hostPID": True,
        "hostIPC": True,
        "securityContext": {
            "runAsNonRoot": False,
            "runAsUser": 0,
            "seccompProfile": {"type": "Unconfined"},
            "sysctls": [
                {"name": "kernel.msgmax", "value": "65536"},
                {"name": "net.ipv4.tcp_syncookies", "value": "1"},
            ],
            "seLinuxOptions": {"type": "spc_t"},
            "appArmorProfile": {"type": "Unconfined"},
            "windowsOptions": {"hostProcess": True},
        },
        "initContainers": [
            {"name": "init", "image": "busybox", "securityContext": {"privileged": True}}
        ],
        "containers": [
            {
                "name": "main",
                "image": "busybox",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}},
                "securityContext": {
                    "allowPrivilegeEscalation": True,
                    "capabilities": {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"]},
                    "procMount": "Unmasked",
                    "seLinuxOptions": {"user": "system_u"},
                    "runAsUser": 0,
                },
            }
        ],
        "volumes": [
            {"name": "host", "hostPath": {"path": "/"}},
            {"name": "share", "nfs": {"server": "nfs", "path": "/"}},
            {"name": "scratch", "emptyDir": {}},
        ],
    },
}


def test_the_checker_names_every_rule_a_bad_pod_breaks() -> None:
    found = podsecurity.violations(BAD_POD)
    rules = {line.split(":", 1)[0] for line in found}
    assert rules == {
        # baseline
        "hostProcess", "hostNamespaces", "privileged", "capabilities_baseline",
        "hostPathVolumes", "hostPorts", "hostProbesAndHostLifecycle", "appArmorProfile",
        "seLinuxOptions", "procMount", "seccompProfile_baseline", "sysctls",
        # restricted
        "restrictedVolumes", "allowPrivilegeEscalation", "runAsNonRoot", "runAsUser",
        "seccompProfile_restricted", "capabilities_restricted",
    }  # fmt: skip
    assert "sysctls: kernel.msgmax" in found
    assert "sysctls: net.ipv4.tcp_syncookies" not in found  # a safe one
    assert "restrictedVolumes: share is ['nfs']" in found
    assert "restrictedVolumes: scratch is []" not in found
    assert "capabilities_restricted: containers[main] adds ['SYS_ADMIN']" in found
    assert "hostNamespaces: hostPID" in found


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda c, s: c.pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
        (lambda c, s: c.update(capabilities={"drop": ["NET_RAW"]}), "capabilities_restricted"),
        (lambda c, s: c.update(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
         None),
        (lambda c, s: (c.pop("runAsNonRoot"), s.pop("runAsNonRoot")), "runAsNonRoot"),
        (lambda c, s: c.pop("runAsNonRoot"), None),  # the Pod's true covers the container
        (lambda c, s: (c.pop("seccompProfile"), s.pop("seccompProfile")),
         "seccompProfile_restricted"),
        (lambda c, s: c.update(seccompProfile={"type": "Localhost",
                                               "localhostProfile": "rank.json"}), None),
        (lambda c, s: c.update(runAsUser=0), "runAsUser"),
    ],
)  # fmt: skip
def test_one_field_of_a_good_pod_changed_is_one_rule_broken(change: Any, rule: str | None) -> None:
    pod = manifests.pod(job(integrations=[]), options())
    change(pod["spec"]["containers"][0]["securityContext"], pod["spec"]["securityContext"])
    found = {line.split(":", 1)[0] for line in podsecurity.violations(pod)}
    assert found == ({rule} if rule else set())
