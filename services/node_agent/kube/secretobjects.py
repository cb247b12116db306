"""A rank's secrets (``services.node_agent.secrets``) as Kubernetes objects: what its Pod refers
to, and the two Secrets that hold them, each owned by the rank's Pod (deleted with it).

- ``<pod>-secrets`` (``Opaque``): each variable of ``RunSecrets.environment`` under
  ``env.<NAME>`` and each file of ``RunSecrets.files`` under ``file.<i>``. The Pod names them
  only: the variables as ``valueFrom.secretKeyRef`` in the command's container and in each
  integration's (git's key and token reach ``git_repo``'s clone), the files as Secret volumes,
  one per directory (``items`` put each file at its name with its mode; read-only), mounted where
  the secret says (``/secrets/db`` holds ``secret``). No value is ever in the Pod's spec.
- ``<pod>-pull`` (``kubernetes.io/dockerconfigjson``): the docker secret for the image's
  registry, as ``config.json``; the Pod's ``imagePullSecrets`` names it.

Both are created right after the Pod (they need its uid to be owned by it). Until they exist the
kubelet waits to mount the volume and to start the container, and the first pull of a private
image may be refused: the kubelet pulls again with back-off, and the executor fails the rank only
after ``kube_image_pull_backoff_s``.

Pure: no IO.
"""

from __future__ import annotations

import base64
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from services.node_agent.job import RankKey
from services.node_agent.kube import naming
from services.node_agent.secrets import RunSecrets

Json = dict[str, Any]
#: A writable directory of every container of the Pod (manifests.SHARED): git's known_hosts.
SCRATCH = PurePosixPath("/runplane")


class Layout(NamedTuple):
    """What a rank's Pod takes of its secrets, and what their Secrets hold."""

    env: list[Json]  # valueFrom entries, for every container
    volumes: list[Json]
    mounts: list[Json]
    pull: list[Json]  # imagePullSecrets
    data: dict[str, bytes]  # the Opaque Secret's keys (never in the Pod)
    docker: bytes | None  # the pull Secret's config.json

    @property
    def empty(self) -> bool:
        return not self.data and self.docker is None


def secrets_name(key: RankKey) -> str:
    return f"{naming.pod_name(key)}-secrets"


def pull_name(key: RankKey) -> str:
    return f"{naming.pod_name(key)}-pull"


def layout(key: RankKey, found: RunSecrets, image: str) -> Layout:
    name = secrets_name(key)
    data: dict[str, bytes] = {}
    env = []
    for variable, value in sorted(found.environment(scratch=SCRATCH).items()):
        data[f"env.{variable}"] = value.encode()
        ref = {"secretKeyRef": {"name": name, "key": f"env.{variable}"}}
        env.append({"name": variable, "valueFrom": ref})
    by_directory: dict[PurePosixPath, list[Json]] = {}
    for index, file in enumerate(found.files()):
        data[f"file.{index}"] = file.content
        item = {"key": f"file.{index}", "path": file.path.name, "mode": file.mode}
        by_directory.setdefault(file.path.parent, []).append(item)
    volumes, mounts = [], []
    for index, (directory, items) in enumerate(sorted(by_directory.items())):
        volume = f"secret-{index}"
        secret = {"secretName": name, "items": items, "defaultMode": 0o400}
        volumes.append({"name": volume, "secret": secret})
        mounts.append({"name": volume, "mountPath": str(directory), "readOnly": True})
    docker = found.docker_config(image)
    pull = [{"name": pull_name(key)}] if docker is not None else []
    return Layout(env, volumes, mounts, pull, data, docker)


def _owned(key: RankKey, owner_uid: str) -> list[Json]:
    return [{"apiVersion": "v1", "kind": "Pod", "name": naming.pod_name(key), "uid": owner_uid}]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def objects(key: RankKey, namespace: str, plan: Layout, owner_uid: str) -> list[Json]:
    """The Secrets of ``plan`` (none, one or two), owned by the rank's Pod."""
    found = []
    labels = {naming.MANAGED_BY: naming.MANAGER}
    if plan.data:
        found.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": secrets_name(key), "namespace": namespace, "labels": labels,
                    "ownerReferences": _owned(key, owner_uid),
                },
                "data": {k: _b64(v) for k, v in sorted(plan.data.items())},
            }
        )  # fmt: skip
    if plan.docker is not None:
        found.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/dockerconfigjson",
                "metadata": {
                    "name": pull_name(key), "namespace": namespace, "labels": labels,
                    "ownerReferences": _owned(key, owner_uid),
                },
                "data": {".dockerconfigjson": _b64(plan.docker)},
            }
        )  # fmt: skip
    return found
