"""The Kubernetes API as the executor uses it: the only module that imports the ``kubernetes``
client, with types at its edge.

The official client is synchronous (urllib3): every call here blocks, and the executor makes
them off the event loop (``asyncio.to_thread``; the watch and the log followers in threads of
their own, because they block for minutes). Its asyncio sibling, ``kubernetes_asyncio``, is a
separate project that trails the official client; the few calls made here do not justify a
second HTTP stack next to redis-py's.

Objects go in and come out as plain JSON dicts, exactly as the API server speaks them (and as
``kubectl get -o json`` prints them), never as the client's models: the pure modules read the
same shape the recorded test Pods have. Errors come out as:

- ``Gone`` (410) and ``WatchError`` (the server could not be reached or failed: temporary);
- ``Refused``: the API server refused the request for good (403 forbidden or over quota,
  422 invalid): retrying the same request cannot help.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from services.node_agent.errors import NodeAgentError
from services.node_agent.kube.watch import GONE, Gone, Json, WatchError

_CONNECT_S = 10.0
_CONFLICT, _NOT_FOUND = 409, 404
_TEMPORARY = frozenset({429, 500, 502, 503, 504})


class Refused(NodeAgentError):
    """The API server refused the request; permanent."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def connect(
    *, in_cluster: bool, config_file: Path | None = None, context: str | None = None
) -> client.CoreV1Api:
    """A CoreV1 client: the Pod's service account, or a kubeconfig (``$KUBECONFIG``)."""
    if in_cluster:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.CoreV1Api(client.ApiClient(configuration))
    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(config_file) if config_file else None, context=context
    )
    return client.CoreV1Api(api_client)


class KubeApi:
    """The calls of one node-agent: its namespace, its Pods (by ``selector``)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, selector: str) -> None:
        self.core = core
        self.namespace = namespace
        self.selector = selector

    # --- the watch's (``watch.PodApi``) ------------------------------------------------

    def list_pods(self) -> tuple[list[Json], str]:
        body = self._json(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self.selector,
            _request_timeout=(_CONNECT_S, 60),
        )
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def watch_pods(self, resource_version: str, timeout_s: int) -> Iterator[Json]:
        response = self._call(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self.selector,
            watch=True,
            resource_version=resource_version,
            timeout_seconds=timeout_s,
            allow_watch_bookmarks=True,
            _request_timeout=(_CONNECT_S, timeout_s + 30),  # a silent stream is a dead one
        )
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if line:
                    yield cast(Json, json.loads(line))
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise WatchError(f"the watch broke: {exc!r}") from exc
        finally:
            response.release_conn()

    # --- Pods and Services ----------------------------------------------------------------

    def create_pod(self, manifest: Json) -> Json | None:
        """The created Pod; None if one of that name exists already."""
        return self._create(self.core.create_namespaced_pod, manifest)

    def create_service(self, manifest: Json) -> None:
        self._create(self.core.create_namespaced_service, manifest)

    def create_secret(self, manifest: Json) -> bool:
        """True if the Secret was created; False if one of that name exists already. What the
        API answers (the Secret, with its data) is dropped here, never logged."""
        try:
            self._call(self.core.create_namespaced_secret, self.namespace, manifest).release_conn()
        except Refused as exc:
            if exc.status == _CONFLICT:
                return False
            raise
        return True

    def secret_exists(self, name: str) -> bool:
        try:
            self._call(self.core.read_namespaced_secret, name, self.namespace).release_conn()
        except Refused as exc:
            if exc.status == _NOT_FOUND:
                return False
            raise
        return True

    def get_pod(self, name: str) -> Json | None:
        try:
            return self._json(self.core.read_namespaced_pod, name, self.namespace)
        except Refused as exc:
            if exc.status == _NOT_FOUND:
                return None
            raise

    def delete_pod(self, name: str, grace_period_s: int | None = None) -> None:
        """Delete (with the grace period; None: the Pod's own); a Pod already gone is fine."""
        try:
            self._json(
                self.core.delete_namespaced_pod,
                name,
                self.namespace,
                grace_period_seconds=grace_period_s,
                propagation_policy="Background",
            )
        except Refused as exc:
            if exc.status != _NOT_FOUND:
                raise

    def pod_log(self, name: str, container: str, *, since_time: str | None) -> Iterator[bytes]:
        """A container's output from ``since_time`` (RFC 3339) on, each line after its
        timestamp, until the container ends (or the stream breaks: ``WatchError``)."""
        extra: dict[str, Any] = {"since_time": since_time} if since_time else {}
        response = self._call(
            self.core.read_namespaced_pod_log,
            name,
            self.namespace,
            container=container,
            follow=True,
            timestamps=True,
            _request_timeout=(_CONNECT_S, None),
            **extra,
        )
        try:
            yield from response.stream(64 * 1024, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WatchError(f"the log stream broke: {exc!r}") from exc
        finally:
            response.release_conn()

    # --- the client, tamed ---------------------------------------------------------------

    def _create(self, method: Any, manifest: Json) -> Json | None:
        try:
            return self._json(method, self.namespace, manifest)
        except Refused as exc:
            if exc.status == _CONFLICT:
                return None
            raise

    def _json(self, method: Any, *args: Any, **kwargs: Any) -> Json:
        response = self._call(method, *args, **kwargs)
        try:
            return cast(Json, json.loads(response.data))
        finally:
            response.release_conn()

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", (_CONNECT_S, 60))
        try:
            return method(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise _error(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WatchError(f"the API server did not answer: {exc!r}") from exc


def _error(exc: ApiException) -> Exception:
    status = int(exc.status or 0)
    message = str(exc.reason or "")
    if exc.body:
        try:
            message = str(json.loads(exc.body).get("message") or message)
        except (ValueError, AttributeError):
            message = str(exc.body)[:500]
    if status == GONE:
        return Gone(message)
    if status in _TEMPORARY or status == 0:
        return WatchError(f"{status}: {message}")
    return Refused(status, message)
