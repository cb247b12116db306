"""One watch over this node-agent's Pods: the latest state of each, delivered as it changes.

The informer pattern, reduced to what the executor needs. ``run`` (blocking: it lives in a
thread of its own) lists the Pods, then watches from the list's ``resourceVersion``:

- every ``ADDED`` / ``MODIFIED`` Pod goes to ``sink(name, pod)``, a ``DELETED`` one to
  ``sink(name, None)``; a ``BOOKMARK`` only moves the resourceVersion on;
- a watch that ends (the server's ``timeoutSeconds``) or breaks (a connection error, the API
  server restarting) is resumed from the last resourceVersion seen, after a back-off when it
  broke; no event is lost or delivered twice by a resume;
- ``410 Gone`` (that resourceVersion is compacted away, as an ERROR event or as the answer to
  the watch request) is answered by listing again: every listed Pod whose resourceVersion
  changed goes to the sink, and every Pod the list no longer has goes as deleted, so a
  deletion that happened in the gap is not missed.

``synced`` is set after the first list: from then on, a Pod the sink has not been told about
does not exist. The sink is called from the watch's thread. No clock but the back-off's waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import structlog

from services.node_agent.errors import NodeAgentError

log = structlog.get_logger(__name__)

Json = Mapping[str, Any]
Sink = Callable[[str, Json | None], None]
GONE = 410


class WatchError(NodeAgentError):
    """The API server could not be reached or refused a request: try again later."""


class Gone(WatchError):
    """410: the resourceVersion is too old to watch from; list again."""


class PodApi(Protocol):
    """The API calls the watch makes, bound to a namespace and a label selector."""

    def list_pods(self) -> tuple[list[Json], str]:
        """The Pods and the list's resourceVersion."""
        ...

    def watch_pods(self, resource_version: str, timeout_s: int) -> Iterator[Json]:
        """Raw watch events (``{"type": ..., "object": ...}``) from ``resource_version``
        until the server ends the watch; raises ``Gone`` or ``WatchError``."""
        ...


class PodWatch:
    def __init__(
        self,
        api: PodApi,
        sink: Sink,
        *,
        timeout_s: int = 300,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.api = api
        self.sink = sink
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.pods: dict[str, Json] = {}
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.lists = 0  # how many times it listed (once, plus once per 410)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """List and watch until ``stop``; never raises for the API's failures."""
        delay = self.backoff_s[0]
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
                delay = self.backoff_s[0]
            except Gone as exc:
                log.info("watch.gone", resource_version=self.resource_version, why=str(exc))
                self.resource_version = None  # list again, at once
            except WatchError as exc:
                log.warning("watch.broken", error=str(exc), retry_in=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])

    def _list(self) -> None:
        items, resource_version = self.api.list_pods()
        self.lists += 1
        listed = {_name(pod): pod for pod in items}
        for name, pod in listed.items():
            if _version(self.pods.get(name)) != _version(pod):
                self.sink(name, pod)
        for name in self.pods.keys() - listed.keys():
            self.sink(name, None)
        self.pods = listed
        self.resource_version = resource_version
        self.synced.set()
        log.info("watch.listed", pods=len(listed), resource_version=resource_version)

    def _watch(self) -> None:
        assert self.resource_version is not None
        for event in self.api.watch_pods(self.resource_version, self.timeout_s):
            if self._stop.is_set():
                return
            kind = event.get("type")
            obj: Json = event.get("object") or {}
            if kind == "ERROR":
                message = f"{obj.get('reason', '')}: {obj.get('message', '')}"
                if obj.get("code") == GONE:
                    raise Gone(message)
                raise WatchError(message)
            version = _version(obj)
            if kind in ("ADDED", "MODIFIED"):
                name = _name(obj)
                self.pods[name] = obj
                self.sink(name, obj)
            elif kind == "DELETED":
                name = _name(obj)
                self.pods.pop(name, None)
                self.sink(name, None)
            if version:  # BOOKMARK too: a resume starts after it
                self.resource_version = version


def _name(pod: Json) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def _version(pod: Json | None) -> str:
    if pod is None:
        return ""
    return str((pod.get("metadata") or {}).get("resourceVersion", ""))
