"""A rank's output, from its Pod's containers to the log-collector's ingest stream.

One thread per container follows its log (``follow=true``) and hands each line to the rank's
``OutputPump`` on the event loop: the same pump, buffer and ingest entries as the ``process``
executor's setup output. The integrations' init containers and then the command's container
are followed in that order, as they run. Kubernetes merges a container's stdout and stderr
into one log: every line is filed as stdout.

The log is asked for with timestamps. A line is sent only if it is newer than the last one
sent for that container (``ledger``: its stamp, and how many lines sent carry it, since the
lines of one read share a stamp): a stream that breaks is followed again from that point
(``sinceTime``), and so is the log of a rank adopted after a restart, so no line is sent
twice and none is skipped while the kubelet keeps the log. The follower ends when a stream
ends and ``finished()`` says the container is over.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import structlog

from services.node_agent.kube.api import KubeApi
from services.node_agent.kube.watch import WatchError
from services.node_agent.pump import OutputPump
from services.node_agent.shim.lines import LineSplitter
from services.node_agent.stamps import Position, Skip, split_stamp
from services.output import ingest

log = structlog.get_logger(__name__)

_STAMP_MAX = 40  # "2025-05-14T09:14:09.123456789Z " and then some
_RECORD_EVERY = 1000  # lines between two records of progress (and at every stream's end)
_RETRY_S = 1.0


class Follower:
    def __init__(
        self,
        api: KubeApi,
        pod: str,
        container: str,
        pump: OutputPump,
        loop: asyncio.AbstractEventLoop,
        *,
        sent_until: str | None,
        record: Callable[[str], None],
        finished: Callable[[], bool],
    ) -> None:
        self.api = api
        self.pod = pod
        self.container = container
        self.pump = pump
        self.loop = loop
        self.position = Position(sent_until)
        self.record = record
        self.finished = finished
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"logs:{pod}/{container}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._follow()
                except WatchError as exc:
                    log.info("logs.broken", pod=self.pod, container=self.container, why=str(exc))
                if self.finished() or self._stop.wait(_RETRY_S):
                    break
        except Exception:  # a follower must not die silently: say so, the rank goes on
            log.exception("logs.failed", pod=self.pod, container=self.container)
        finally:
            self.done.set()

    def _follow(self) -> None:
        # Sent before the stream broke, or before the agent restarted: read again, not sent.
        position = self.position
        skip = Skip(position.stamp, position.count if position.stamp else 0)
        splitter = LineSplitter(ingest.MAX_LINE + _STAMP_MAX)
        count = 0
        try:
            for chunk in self.api.pod_log(self.pod, self.container, since_time=self._since()):
                for line, cut in splitter.feed(chunk):
                    self._line(line, cut, skip)
                    count += 1
                    if count % _RECORD_EVERY == 0 and position.stamp:
                        self.record(str(position))
                if self._stop.is_set():
                    return
            last = splitter.close()
            if last is not None:
                self._line(*last, skip)
        finally:
            if position.stamp:
                self.record(str(position))

    def _line(self, line: bytes, cut: int, skip: Skip) -> None:
        stamp, text, rest = split_stamp(line)
        if stamp is not None:
            if skip.sent_before(stamp):
                return
            self.position.sent(stamp, text)
        self.loop.call_soon_threadsafe(self.pump.put, ingest.STDOUT, rest, cut)

    def _since(self) -> str | None:
        """``sinceTime`` has whole seconds: the lines of that second are filtered here."""
        stamp = self.position.stamp
        return f"{stamp[0]}Z" if stamp else None
