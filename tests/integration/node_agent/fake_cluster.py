"""A stand-in for the Kubernetes API server (and nothing else): it keeps Pods as the recorded
objects of ``tests/golden/kube``, serves them to the executor's list, watch and log calls, and
lets a test move a Pod from one recorded state to the next."""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from typing import Any

from services.node_agent.kube.watch import Json
from tests.unit.node_agent.kube.pods import recorded

_IDLE_S = 0.2  # a watch with nothing to say ends, as the server's timeoutSeconds does


class FakeCluster:
    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.created: list[Json] = []
        self.services: list[Json] = []
        self.secrets: dict[str, Json] = {}
        self.deleted: list[tuple[str, int | None]] = []
        self.logs: dict[tuple[str, str], list[bytes]] = {}
        self._version = 1000
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()

    # --- what the test does ---------------------------------------------------------------

    def move(self, name: str, case: str) -> None:
        """Pod ``name`` takes the spec and status of the recorded Pod ``case``."""
        with self._lock:
            pod = self.pods[name]
            shape = recorded(case)
            if "nodeName" in shape["spec"]:
                pod["spec"]["nodeName"] = shape["spec"]["nodeName"]
            pod["status"] = shape["status"]
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                if field in shape["metadata"]:
                    pod["metadata"][field] = shape["metadata"][field]
            self._changed("MODIFIED", pod)

    def add(self, manifest: Json, case: str) -> None:
        """A Pod that exists already (created by an agent before its restart)."""
        self._create(manifest)
        self.move(str(manifest["metadata"]["name"]), case)

    def remove(self, name: str) -> None:
        with self._lock:
            pod = self.pods.pop(name)
            self._changed("DELETED", pod)

    # --- what the executor calls (``KubeApi``'s methods) -----------------------------------

    def list_pods(self) -> tuple[list[Json], str]:
        with self._lock:
            return [copy.deepcopy(p) for p in self.pods.values()], str(self._version)

    def watch_pods(self, resource_version: str, timeout_s: int) -> Iterator[Json]:
        while True:
            try:
                event = self._events.get(timeout=_IDLE_S)
            except queue.Empty:
                return
            if int(event["object"]["metadata"]["resourceVersion"]) > int(resource_version):
                yield event

    def create_pod(self, manifest: Json) -> Json | None:
        self.created.append(manifest)
        return self._create(manifest)

    def create_service(self, manifest: Json) -> None:
        self.services.append(manifest)

    def create_secret(self, manifest: Json) -> bool:
        name = str(manifest["metadata"]["name"])
        if name in self.secrets:
            return False
        self.secrets[name] = copy.deepcopy(dict(manifest))
        return True

    def secret_exists(self, name: str) -> bool:
        return name in self.secrets

    def get_pod(self, name: str) -> Json | None:
        with self._lock:
            return copy.deepcopy(self.pods.get(name))

    def delete_pod(self, name: str, grace_period_s: int | None = None) -> None:
        self.deleted.append((name, grace_period_s))
        with self._lock:
            pod = self.pods.get(name)
            if pod is not None and pod["status"].get("phase") in ("Succeeded", "Failed"):
                del self.pods[name]  # nothing runs in it: the kubelet removes it at once
                self._changed("DELETED", pod)
            elif pod is not None and "deletionTimestamp" not in pod["metadata"]:
                pod["metadata"]["deletionTimestamp"] = "2025-05-14T10:40:12Z"
                self._changed("MODIFIED", pod)

    def pod_log(self, name: str, container: str, *, since_time: str | None) -> Iterator[bytes]:
        yield from self.logs.get((name, container), [])

    # --- inside -------------------------------------------------------------------------------

    def _create(self, manifest: Json) -> Json | None:
        name = str(manifest["metadata"]["name"])
        with self._lock:
            if name in self.pods:
                return None
            pod = copy.deepcopy(dict(manifest))
            pod["metadata"]["uid"] = f"uid-{name}"
            pod["status"] = recorded("pending-unscheduled")["status"]
            self.pods[name] = pod
            self._changed("ADDED", pod)
            return copy.deepcopy(pod)

    def _changed(self, kind: str, pod: dict[str, Any]) -> None:
        self._version += 1
        pod["metadata"]["resourceVersion"] = str(self._version)
        self._events.put({"type": kind, "object": copy.deepcopy(pod)})
