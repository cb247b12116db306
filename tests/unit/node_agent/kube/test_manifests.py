"""The Pod of a rank and the Service of an attempt: valid for the Kubernetes API (the official
schema, strict: no field it does not know), and carrying what the rank needs to run."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.model import RankPlacement
from events.secrets import Secret
from events.spec import Compute, RunSpec
from services.node_agent import incontainer
from services.node_agent.incontainer import BadIntegration
from services.node_agent.job import RankJob, RankKey
from services.node_agent.kube import manifests, naming, secretobjects
from services.node_agent.kube.manifests import PodOptions
from services.node_agent.secrets import RunSecrets

#: A recent Kubernetes release whose schema kubernetes-validate ships.
K8S = "1.34"
RUN = "0f3a9c1e5b7d4a2c8e6f1b3d5a7c9e0f"
OPTIONS = PodOptions(namespace="ml", node="gpu-node-7", actor="node-agent@gpu-node-7",
                     grace_period_s=29.5, run_as_user=1000)  # fmt: skip
GIT = {"integration_type": "git_repo", "git_repo": "org/trainer", "git_commit": "abc123",
       "pip_install": "-e ."}  # fmt: skip
PIP = {"integration_type": "pip_packages", "packages": ["numpy", "einops"]}


def job(rank: int = 1, gpus: tuple[int, ...] = (4, 5, 6, 7), **spec: Any) -> RankJob:
    run_spec = RunSpec(
        name="llm",
        image=spec.pop("image", "mosaicml/pytorch:2.4.0_cu124-python3.11-ubuntu22.04"),
        command=spec.pop("command", "composer train.py --lr $LR"),
        compute=Compute(cluster="k8s", gpus=8),
        env_variables=spec.pop("env_variables", {"LR": "3e-4", "MASTER_PORT": "1"}),
        parameters=spec.pop("parameters", {"optimizer": {"lr": 3e-4}, "steps": 1000}),
        integrations=spec.pop("integrations", [GIT, PIP]),
    )
    placement = [RankPlacement(rank=0, node="gpu-node-3", gpus=[0, 1, 2, 3]),
                 RankPlacement(rank=1, node="gpu-node-7", gpus=list(gpus))]  # fmt: skip
    return RankJob(run_id=RUN, run_name="llm-qwerty", attempt=2, rank=rank,
                   node=placement[rank].node, spec=run_spec, placement=placement)  # fmt: skip


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


@pytest.mark.parametrize("strict", [False, True])
def test_the_pod_and_the_service_validate_against_the_kubernetes_schema(strict: bool) -> None:
    for rank in (0, 1):
        kubernetes_validate.validate(manifests.pod(job(rank), OPTIONS), K8S, strict=strict)
    pinned = OPTIONS._replace(kube_node="ip-10-0-3-7.ec2.internal")
    kubernetes_validate.validate(manifests.pod(job(integrations=[]), pinned), K8S, strict=strict)
    as_root = OPTIONS._replace(run_as_user=0)
    kubernetes_validate.validate(manifests.pod(job(), as_root), K8S, strict=strict)
    service = manifests.service(job(0), OPTIONS, owner_uid="6f0a3c2e-8f1b-4a55-9a54-2b1c0e7d9f11")
    kubernetes_validate.validate(service, K8S, strict=strict)


def test_an_invalid_manifest_is_caught_by_the_validator() -> None:
    """The check has teeth: a Pod with a field of the wrong type is refused."""
    pod = manifests.pod(job(), OPTIONS)
    pod["spec"]["terminationGracePeriodSeconds"] = "thirty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S, strict=True)


def test_the_pod_runs_the_rank_once_with_its_gpus_and_grace_period() -> None:
    pod = manifests.pod(job(), OPTIONS)
    spec = pod["spec"]
    (main,) = spec["containers"]
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 30  # rounded up, never shorter
    assert main["resources"] == {"limits": {"nvidia.com/gpu": 4}}
    assert main["image"] == "mosaicml/pytorch:2.4.0_cu124-python3.11-ubuntu22.04"
    assert "nodeSelector" not in spec
    pinned = manifests.pod(job(), OPTIONS._replace(kube_node="ip-10-0-3-7"))
    assert pinned["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "ip-10-0-3-7"}


def test_a_rank_without_gpus_asks_for_none_and_sees_none() -> None:
    (main,) = manifests.pod(job(gpus=()), OPTIONS)["spec"]["containers"]
    assert "resources" not in main
    assert env_of(main)["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_the_mcli_environment_points_at_rank_zero_through_the_headless_service() -> None:
    pod = manifests.pod(job(), OPTIONS)
    env = env_of(pod["spec"]["containers"][0])
    rank0 = naming.pod_name(RankKey(RUN, 2, 0))
    service = naming.service_name(RUN, 2)
    assert env["MASTER_ADDR"] == f"{rank0}.{service}.ml.svc"
    assert env["MASTER_PORT"] != "1"  # mcli's variables win over the run's own
    assert (env["NODE_RANK"], env["WORLD_SIZE"], env["NUM_NODES"]) == ("1", "8", "2")
    assert (env["LOCAL_WORLD_SIZE"], env["RUN_NAME"], env["RESUMPTION_INDEX"]) == (
        "4", "llm-qwerty", "2",
    )  # fmt: skip
    assert env["LR"] == "3e-4"
    assert env["RUNPLANE_COMMAND"] == "composer train.py --lr $LR"
    assert "CUDA_VISIBLE_DEVICES" not in env  # the device plugin numbers a Pod's GPUs from 0
    assert env["PARAMETERS"] == "/etc/runplane/parameters.yaml"
    # The rank-0 Pod answers to that name: its hostname and subdomain are the two labels.
    rank0_spec = manifests.pod(job(rank=0), OPTIONS)["spec"]
    assert (rank0_spec["hostname"], rank0_spec["subdomain"]) == (rank0, service)
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (pod["metadata"]["name"], service)


def test_parameters_reach_the_file_through_the_downward_api() -> None:
    pod = manifests.pod(job(), OPTIONS)
    annotation = pod["metadata"]["annotations"][naming.PARAMETERS]
    assert json.loads(annotation) == {"optimizer": {"lr": 3e-4}, "steps": 1000}
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "parameters"]
    (item,) = volume["downwardAPI"]["items"]
    assert item == {
        "path": "parameters.yaml",
        "fieldRef": {"fieldPath": "metadata.annotations['runplane.dev/parameters']"},
    }


def test_integrations_run_in_order_as_init_containers_sharing_the_workspace() -> None:
    pod = manifests.pod(job(), OPTIONS)
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["integration-0", "integration-1"]
    clone, pip = (c["command"][2] for c in inits)
    assert clone.startswith("set -e\n")
    assert "git clone -- https://github.com/org/trainer /runplane/workspace/trainer" in clone
    assert "checkout abc123" in clone
    assert "/runplane/venv/bin/python -m pip install -e ." in clone
    assert "[ -e /runplane/venv ] || python3 -m venv --system-site-packages" in pip
    assert "pip install numpy einops" in pip
    assert all(c["image"] == pod["spec"]["containers"][0]["image"] for c in inits)
    assert all(env_of(c)["GIT_TERMINAL_PROMPT"] == "0" for c in inits)
    shared = {"name": "runplane", "mountPath": "/runplane"}
    assert all(shared in c["volumeMounts"] for c in [*inits, *pod["spec"]["containers"]])
    assert incontainer.PRELUDE in pod["spec"]["containers"][0]["command"]
    assert "initContainers" not in manifests.pod(job(integrations=[]), OPTIONS)["spec"]


@pytest.mark.parametrize(
    ("integration", "words"),
    [
        ({"integration_type": "apt_packages", "packages": ["htop"]}, "install them in the image"),
        ({"integration_type": "wandb"}, "unknown integration_type 'wandb'"),
        ({"integration_type": "pip_packages"}, "'packages' must be"),
    ],
)
def test_an_integration_it_cannot_run_is_refused_with_its_index(
    integration: dict[str, Any], words: str
) -> None:
    with pytest.raises(BadIntegration, match=words) as caught:
        manifests.pod(job(integrations=[PIP, integration]), OPTIONS)
    assert (caught.value.index, caught.value.integration_type) == (
        1, integration["integration_type"],
    )  # fmt: skip


def test_labels_and_annotations_tie_the_pod_to_its_rank_and_agent() -> None:
    pod = manifests.pod(job(), OPTIONS)
    metadata = pod["metadata"]
    assert naming.key_of(metadata) == RankKey(RUN, 2, 1)
    assert metadata["labels"][naming.NODE] == "gpu-node-7"
    assert metadata["annotations"][naming.ACTOR] == "node-agent@gpu-node-7"
    selector = dict(part.split("=") for part in naming.node_selector("gpu-node-7").split(","))
    assert selector.items() <= metadata["labels"].items()
    service = manifests.service(job(0), OPTIONS, owner_uid="uid-0")
    assert service["spec"]["selector"].items() <= metadata["labels"].items()
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    (owner,) = service["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Pod", naming.pod_name(RankKey(RUN, 2, 0)), "uid-0",
    )  # fmt: skip


_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_VALUE = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


@given(st.text(min_size=1, max_size=200))
def test_any_text_becomes_a_dns_label_and_a_label_value(text: str) -> None:
    label, value = naming.dns_label(text), naming.label_value(text)
    assert len(label) <= 63
    assert len(value) <= 63
    assert re.fullmatch(_LABEL, label)
    assert re.fullmatch(_VALUE, value)


def test_a_valid_name_stays_itself_and_an_altered_one_keeps_it_apart() -> None:
    assert naming.dns_label("rp-0f3a-2-1") == "rp-0f3a-2-1"
    assert naming.label_value("llm_v2.1-qwerty") == "llm_v2.1-qwerty"
    assert naming.dns_label("Train") != naming.dns_label("train")  # a checksum tells them apart
    assert naming.dns_label("x" * 64) != naming.dns_label("x" * 65)


# --- the run token (issue 19) -------------------------------------------------------------------

TOKEN = "rpt.0f3a9c1e5b7d4a2c8e6f1b3d5a7c9e0f.tokenaaa1." + "s" * 43
WITH_API = OPTIONS._replace(api_url="http://runplane-api.ml.svc:8765/graphql")
POD_UID = "6f0a3c2e-8f1b-4a55-9a54-2b1c0e7d9f11"


@pytest.mark.parametrize("strict", [False, True])
def test_the_token_secret_and_its_pod_validate(strict: bool) -> None:
    kubernetes_validate.validate(manifests.pod(job(), WITH_API), K8S, strict=strict)
    secret = manifests.token_secret(job().key, WITH_API, TOKEN, owner_uid=POD_UID)
    kubernetes_validate.validate(secret, K8S, strict=strict)


def test_the_token_is_in_its_secret_owned_by_the_pod_and_mounted_read_only_for_the_rank() -> None:
    pod = manifests.pod(job(), WITH_API)
    secret = manifests.token_secret(job().key, WITH_API, TOKEN, owner_uid=POD_UID)
    assert TOKEN not in json.dumps(pod), "the Pod's spec never holds the token"
    assert secret["stringData"] == {"token": TOKEN}
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", pod["metadata"]["name"], POD_UID)
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "token"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["defaultMode"] == 0o400
    main = pod["spec"]["containers"][0]
    assert {"name": "token", "mountPath": "/var/run/runplane", "readOnly": True} in (
        main["volumeMounts"]
    )
    env = env_of(main)
    assert env["MOSAICML_PLATFORM"] == "true"
    assert env["MOSAICML_ACCESS_TOKEN_FILE"] == "/var/run/runplane/token"
    assert env["MOSAICML_API_ENDPOINT"] == WITH_API.api_url
    for init in pod["spec"].get("initContainers", []):
        assert "token" not in [m["name"] for m in init["volumeMounts"]], "integrations: no token"


def test_without_an_api_a_pod_has_no_token_and_no_platform_variables() -> None:
    pod = manifests.pod(job(), OPTIONS)
    assert "token" not in [v["name"] for v in pod["spec"]["volumes"]]
    assert not [name for name in env_of(pod["spec"]["containers"][0]) if "MOSAICML" in name]


# --- the run owner's secrets (issue 21) ----------------------------------------------------------

SECRETS = RunSecrets(
    "alice",
    [
        Secret(name="tok", secret_type="env", metadata={"key": "API_TOKEN"},
               value={"value": "tok-value-1"}),
        Secret(name="clash", secret_type="env", metadata={"key": "NODE_RANK"},
               value={"value": "99"}),
        Secret(name="lr", secret_type="env", metadata={"key": "LR"}, value={"value": "1e-3"}),
        Secret(name="db", secret_type="mounted", metadata={"mountPath": "/secrets/db"},
               value={"value": "db-value-2"}),
        Secret(name="aws", secret_type="s3", metadata={"mountDirectory": "/secrets/aws"},
               value={"credentials": "[d]\nk=aws-value-3\n", "config": "[d]\n"}),
        Secret(name="gitkey", secret_type="git", metadata={"mountPath": "/keys/git"},
               value={"value": "git-value-4"}),
        Secret(name="reg", secret_type="docker", metadata={},
               value={"server": "reg.example:5000", "username": "u", "password": "reg-value-5"}),
    ],
)  # fmt: skip
VALUES = ("tok-value-1", "db-value-2", "aws-value-3", "git-value-4", "reg-value-5")
OWNER_UID = "6f0a3c2e-8f1b-4a55-9a54-2b1c0e7d9f11"


def with_secrets(image: str = "reg.example:5000/team/trainer:1") -> tuple[dict[str, Any], Any]:
    rank_job = job(image=image)
    plan = secretobjects.layout(rank_job.key, SECRETS, image)
    return manifests.pod(rank_job, OPTIONS, plan), plan


@pytest.mark.parametrize("strict", [False, True])
def test_a_pod_with_secrets_and_its_secrets_validate(strict: bool) -> None:
    pod, plan = with_secrets()
    kubernetes_validate.validate(pod, K8S, strict=strict)
    made = secretobjects.objects(job().key, "ml", plan, OWNER_UID)
    assert [m["type"] for m in made] == ["Opaque", "kubernetes.io/dockerconfigjson"]
    for manifest in made:
        kubernetes_validate.validate(manifest, K8S, strict=strict)
        (owner,) = manifest["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                         "uid": OWNER_UID}  # fmt: skip


def test_the_pod_names_its_secrets_and_holds_no_value() -> None:
    pod, plan = with_secrets()
    text = json.dumps(pod)
    for value in VALUES:
        assert value not in text
    assert pod["spec"]["imagePullSecrets"] == [{"name": secretobjects.pull_name(job().key)}]
    (main,) = pod["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"] if "valueFrom" in e}
    assert set(refs) >= {"API_TOKEN", "LR", "SECRET_PATH_DB", "AWS_CONFIG_FILE", "GIT_SSH_COMMAND"}
    for ref in refs.values():
        assert ref["name"] == secretobjects.secrets_name(job().key)
        assert ref["key"] in plan.data
    assert (
        base64.b64decode(
            secretobjects.objects(job().key, "ml", plan, OWNER_UID)[0]["data"]["env.API_TOKEN"]
        )
        == b"tok-value-1"
    )
    plain = {e["name"]: e.get("value") for e in main["env"]}
    assert plain["NODE_RANK"] == "1"  # mcli's own wins over a secret of its name
    assert "LR" not in {e["name"] for e in main["env"] if "value" in e}  # the secret's LR wins
    for init in pod["spec"]["initContainers"]:  # git_repo's clone gets the key too
        assert "GIT_SSH_COMMAND" in {e["name"] for e in init["env"]}
        assert {m["mountPath"] for m in init["volumeMounts"]} >= {"/keys/git"}


def test_each_secret_directory_is_a_read_only_volume_of_its_files() -> None:
    pod, plan = with_secrets()
    (main,) = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in main["volumeMounts"] if m["name"].startswith("secret-")}
    assert set(mounts) == {"/secrets/db", "/secrets/aws", "/keys/git"}
    assert all(m["readOnly"] for m in mounts.values())
    volumes = {v["name"]: v["secret"] for v in pod["spec"]["volumes"] if "secret" in v}
    aws = volumes[mounts["/secrets/aws"]["name"]]
    assert sorted(item["path"] for item in aws["items"]) == ["config", "credentials"]
    assert all(item["key"] in plan.data and item["mode"] == 0o600 for item in aws["items"])


def test_no_secrets_no_change_and_another_registry_no_pull_secret() -> None:
    empty = secretobjects.layout(job().key, RunSecrets("bob", []), "ubuntu")
    assert empty.empty
    assert manifests.pod(job(), OPTIONS, empty) == manifests.pod(job(), OPTIONS)
    assert secretobjects.objects(job().key, "ml", empty, OWNER_UID) == []
    pod, _ = with_secrets(image="ghcr.io/org/trainer")
    assert "imagePullSecrets" not in pod["spec"]
