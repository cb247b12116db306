"""A rank as a Pod, and an attempt's headless Service: plain dicts, shaped as the API takes them.

Why a Pod per rank, not one indexed Job per attempt: our ranks are the scheduler's unit. Each
is placed on its own node with its own GPUs, run by that node's agent, and reported on its own
(``rank.running``, ``rank.exited`` with its own exit code, its own log). A Pod maps onto that
1:1: one object per rank, created, watched, adopted (by its labels) and deleted by the agent
that owns the rank. An indexed Job would put every rank under one controller, owned by no
single agent; it would retry Pods by its own ``backoffLimit`` rather than by the run's
``max_retries``, and its status counts Pods rather than saying which rank exited how.

The Pod (invariants):
- ``restartPolicy: Never``: a rank that exits is over; retries are a new attempt.
- the run's image for every container; ``nvidia.com/gpu`` limits equal the rank's GPUs (a rank
  without GPUs gets ``NVIDIA_VISIBLE_DEVICES=void``: a CUDA image's ``all`` would otherwise
  hand it every GPU of the machine);
- integrations run in order, one init container each (``integration-<i>``), before the
  command. Init containers rather than a shell prelude: Kubernetes runs them in order and
  stops at the first that fails, and each one's state is in the Pod's status, so every
  integration's start, end and failure is observed, not guessed from output. What they make
  must reach the command: they share an ``emptyDir`` at ``/runplane`` with it (the layout is
  ``services.node_agent.incontainer``'s): clones in the workspace, packages in the rank's
  virtual environment (as on the ``process`` executor), put first on the PATH by the
  command's short prelude. ``apt_packages`` cannot carry over from
  one container to another, so it is refused (``BadIntegration``): bake them into the image.
- the command runs under ``bash -c`` (``sh -c`` if the image has no bash), as on the
  ``process`` executor, through ``exec`` so it receives SIGTERM itself;
- the mcli environment (``services.node_agent.environment``): the run's ``env_variables``,
  then MASTER_ADDR = rank 0's Pod's DNS name in the attempt's headless Service (``hostname``
  + ``subdomain``), MASTER_PORT, NODE_RANK, WORLD_SIZE, ... PARAMETERS is a file the Downward
  API writes from the Pod's parameters annotation. CUDA_VISIBLE_DEVICES is left out: in a
  container the device plugin's GPUs are numbered from 0, whatever their index on the node;
- labels and annotations from ``naming``; ``terminationGracePeriodSeconds`` from settings;
  ``enableServiceLinks: false`` (a namespace's Services would add variables to every rank);
- the rank cannot act as anything but itself (issue 20): no service-account token
  (``automountServiceAccountToken: false``: the namespace's account is the agent's business,
  never a run's), and every container under the "restricted" Pod Security Standard: the
  uid, gid and ``fsGroup`` of ``PodOptions.run_as_user`` with ``runAsNonRoot``, no privilege
  escalation, every capability dropped, the runtime's default seccomp profile. Its volumes
  (``emptyDir``, ``downwardAPI``, ``secret``) are all of kinds "restricted" allows. The
  ``fsGroup`` is what lets that uid read its Secret volumes (the token's mode 0400 becomes
  0440, group ``fsGroup``) and write the shared ``emptyDir``. A uid the image does not know
  has no home directory, so ``HOME`` is ``/runplane`` (caches land in the rank's own
  ``emptyDir``) unless the run sets it. ``run_as_user`` 0 runs the rank as root, for an
  image that needs it: the same Pod with ``runAsNonRoot: false``, which meets "baseline"
  only (docs/kubernetes.md says what a platform team does then).

The run owner's secrets (``secretobjects.Layout``) add, when there are any: their variables
(by ``secretKeyRef``) and Secret volumes to the command's container and to each integration's,
and ``imagePullSecrets`` for a docker secret of the image's registry; never a value.

With an API to report to (``PodOptions.api_url``), the rank's run token
(``services.node_agent.runtoken``) is in a Secret of its own, owned by the rank's Pod (deleted
with it), mounted read-only at ``/var/run/runplane/token`` (mode 0400) and named in the
command's environment with the platform's variables; the token is never in the Pod's spec.

The Service is headless (no cluster IP), selects the attempt's Pods, and publishes them before
they are ready (ranks rendezvous before any readiness). Rank 0's agent creates it, owned by rank
0's Pod, so it is deleted with that Pod.

Pure: no IO.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from services.node_agent import runtoken
from services.node_agent.environment import master_port, rank_environment
from services.node_agent.incontainer import (
    COMMAND_VARIABLE,
    PARAMETERS_DIR,
    PARAMETERS_FILE,
    PRELUDE,
    SHARED,
    TOKEN_DIR,
    TOKEN_FILE,
    integration_env,
    integration_script,
)
from services.node_agent.job import RankJob, RankKey
from services.node_agent.kube import naming
from services.node_agent.kube.secretobjects import Layout

MAIN = "rank"
_SECCOMP = "RuntimeDefault"  # the container runtime's own profile


class PodOptions(NamedTuple):
    """What the agent's settings add to a job."""

    namespace: str
    node: str  # the node-agent's node
    actor: str
    grace_period_s: float
    run_as_user: int  # every container's uid, gid and fsGroup; 0: root (not "restricted")
    kube_node: str | None = None  # pin the Pod to this Kubernetes node
    python: str = "python3"
    api_url: str | None = None  # ranks get a run token to report to it


def pod(job: RankJob, options: PodOptions, secrets: Layout | None = None) -> dict[str, Any]:
    """The Pod of ``job`` (with the owner's ``secrets``); raises ``BadIntegration`` for an
    integration it cannot run."""
    name = naming.pod_name(job.key)
    labels = naming.attempt_labels(job.run_id, job.run_name, job.attempt, options.node)
    labels[naming.RANK] = str(job.rank)
    annotations = {
        naming.RUN_ID: job.run_id,
        naming.RUN_NAME: job.run_name,
        naming.ATTEMPT: str(job.attempt),
        naming.RANK: str(job.rank),
        naming.NODE: options.node,
        naming.ACTOR: options.actor,
        naming.PARAMETERS: msgspec.json.encode(job.spec.parameters).decode(),
    }
    mounts = [{"name": "runplane", "mountPath": str(SHARED)}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": math.ceil(options.grace_period_s),
        "hostname": name,
        "subdomain": naming.service_name(job.run_id, job.attempt),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(options),
        "initContainers": init_containers(job, options, mounts, secrets),
        "containers": [main_container(job, options, mounts, secrets)],
        "volumes": [
            {"name": "runplane", "emptyDir": {}},
            {
                "name": "parameters",
                "downwardAPI": {
                    "items": [
                        {
                            "path": PARAMETERS_FILE.name,
                            "fieldRef": {
                                "fieldPath": f"metadata.annotations['{naming.PARAMETERS}']"
                            },
                        }
                    ]
                },
            },
        ],
    }
    if options.api_url is not None:
        spec["volumes"].append(
            {
                "name": "token",
                "secret": {
                    "secretName": naming.token_secret_name(job.key),
                    "defaultMode": 0o400,
                    "items": [{"key": TOKEN_FILE.name, "path": TOKEN_FILE.name}],
                },
            }
        )
    if secrets is not None:
        spec["volumes"] += secrets.volumes
        if secrets.pull:
            spec["imagePullSecrets"] = secrets.pull
    if not spec["initContainers"]:
        del spec["initContainers"]
    if options.kube_node is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": options.kube_node}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": options.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def main_container(
    job: RankJob, options: PodOptions, mounts: list[dict[str, Any]], secrets: Layout | None = None
) -> dict[str, Any]:
    platform = (
        None
        if options.api_url is None
        else runtoken.platform_environment(options.api_url, TOKEN_FILE)
    )
    env = rank_environment(
        job,
        base=_home(options),
        master_addr=naming.master_addr(job.run_id, job.attempt, options.namespace),
        parameters_path=Path(PARAMETERS_FILE),
        platform=platform,
    )
    del env["CUDA_VISIBLE_DEVICES"]
    env[COMMAND_VARIABLE] = job.spec.command
    gpus = len(job.gpus)
    if gpus == 0:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    container: dict[str, Any] = {
        "name": MAIN,
        "image": job.spec.image,
        "command": ["/bin/sh", "-c", PRELUDE],
        "env": _with_secrets(_env_list(env), secrets, _overridable(job, options)),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(options),
        "volumeMounts": [
            *mounts,
            {"name": "parameters", "mountPath": str(PARAMETERS_DIR), "readOnly": True},
            *(secrets.mounts if secrets is not None else []),
        ],
    }
    if options.api_url is not None:
        container["volumeMounts"].append(
            {"name": "token", "mountPath": str(TOKEN_DIR), "readOnly": True}
        )
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return container


def init_containers(
    job: RankJob, options: PodOptions, mounts: list[dict[str, Any]], secrets: Layout | None = None
) -> list[dict[str, Any]]:
    env = {**_home(options), **integration_env(job.spec.env_variables)}
    return [
        {
            "name": integration_container(index),
            "image": job.spec.image,
            "command": [
                "/bin/sh",
                "-c",
                integration_script(
                    index, integration, python=options.python, executor="kubernetes"
                ),
            ],
            "env": _with_secrets(_env_list(env), secrets, _overridable(job, options)),
            # A failed tool's last lines become its status message: the integration's error.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": container_security(options),
            "volumeMounts": [*mounts, *(secrets.mounts if secrets is not None else [])],
        }
        for index, integration in enumerate(job.spec.integrations)
    ]


def pod_security(options: PodOptions) -> dict[str, Any]:
    """The Pod's securityContext: who every container runs as, and its seccomp profile."""
    uid = options.run_as_user
    return {
        "runAsNonRoot": uid != 0,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": _SECCOMP},
    }


def container_security(options: PodOptions) -> dict[str, Any]:
    """Each container's securityContext. ``runAsNonRoot`` and the seccomp profile repeat the
    Pod's, so each container holds to "restricted" on its own."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": options.run_as_user != 0,
        "seccompProfile": {"type": _SECCOMP},
    }


def integration_container(index: int) -> str:
    return f"integration-{index}"


def token_secret(key: RankKey, options: PodOptions, token: str, owner_uid: str) -> dict[str, Any]:
    """The Secret of rank ``key``'s run token, owned by its Pod (uid ``owner_uid``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.token_secret_name(key),
            "namespace": options.namespace,
            "labels": {naming.MANAGED_BY: naming.MANAGER},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": naming.pod_name(key), "uid": owner_uid}
            ],
        },
        "stringData": {TOKEN_FILE.name: token},
    }


def service(job: RankJob, options: PodOptions, owner_uid: str) -> dict[str, Any]:
    """The attempt's headless Service, owned by rank 0's Pod (uid ``owner_uid``)."""
    port = master_port(job.run_id, job.attempt)
    labels = naming.attempt_labels(job.run_id, job.run_name, job.attempt, options.node)
    selector = {key: labels[key] for key in (naming.MANAGED_BY, naming.RUN_ID, naming.ATTEMPT)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.service_name(job.run_id, job.attempt),
            "namespace": options.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": naming.pod_name(job.key._replace(rank=0)),
                    "uid": owner_uid,
                }
            ],
        },
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port}],
        },
    }


def _home(options: PodOptions) -> dict[str, str]:
    """``HOME`` for a uid the image does not know (root has its own)."""
    return {} if options.run_as_user == 0 else {"HOME": str(SHARED)}


def _overridable(job: RankJob, options: PodOptions) -> set[str]:
    """The variables a secret of the same name replaces: the run's own, and ``HOME``."""
    return set(job.spec.env_variables) | set(_home(options))


def _env_list(env: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in env.items()]


def _with_secrets(
    env: list[dict[str, Any]], secrets: Layout | None, overridable: set[str]
) -> list[dict[str, Any]]:
    """``env`` and the secrets' variables, as ``environment.rank_environment`` orders them: a
    secret's variable wins over a run's ``env_variables`` entry (``overridable``), and mcli's
    own variables and the platform's win over a secret's (a secret cannot move NODE_RANK)."""
    if secrets is None or not secrets.env:
        return env
    fixed = {item["name"] for item in env} - overridable
    extra = [item for item in secrets.env if item["name"] not in fixed]
    names = {item["name"] for item in extra}
    return [*(item for item in env if item["name"] not in names), *extra]
