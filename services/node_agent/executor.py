"""How a rank runs, as the node-agent sees it: an ``Executor`` and a ``RankControl`` per rank.

The agent decides (``plan``); an executor carries a rank through its whole life: setup, the
command, the report of its exit; or, after a restart, picks up a rank it finds in its own
records (``resume``). The agent steers a rank only through its ``RankControl``: stop (SIGTERM,
grace period, SIGKILL; setup is aborted) or kill (at once: the log says the rank is over).

``process`` (``services.node_agent.process.executor``) runs ranks as local processes; ``kubernetes``
(``services.node_agent.kube``) as a Pod per rank.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from events.model import Reason
from services.node_agent.job import RankJob, RankKey

log = structlog.get_logger(__name__)


class RankControl:
    """What the agent asks of one rank. Requests only ever escalate: run -> stop -> kill."""

    def __init__(self, key: RankKey) -> None:
        self.key = key
        self.stop_reason: Reason | None = None
        self.killed = False
        self.changed = asyncio.Event()  # set at every request, for whoever waits on the rank

    def stop(self, reason: Reason) -> None:
        if self.stop_reason is None and not self.killed:
            log.info("rank.stop_requested", rank=str(self.key), reason=reason.code)
            self.stop_reason = reason
            self.changed.set()

    def kill(self) -> None:
        if not self.killed:
            log.info("rank.kill_requested", rank=str(self.key))
            self.killed = True
            self.changed.set()

    @property
    def stopping(self) -> bool:
        return self.killed or self.stop_reason is not None


class Executor(Protocol):
    async def prepare(self) -> None:
        """Before ``local_ranks``: learn what runs (the kubernetes executor lists its Pods)."""
        ...

    def isolation(self) -> str:
        """How ranks are kept from the node and from each other, in one line (the agent's
        start, its registration, ``mcli dev status``)."""
        ...

    def close(self) -> None:
        """The agent stops: stop watching (the ranks run on, a restarted agent adopts them)."""
        ...

    def local_ranks(self) -> list[RankKey]:
        """Every rank this executor has begun on this node and not finished."""
        ...

    def begin(self, key: RankKey) -> None:
        """Record that ``key`` is begun, before anything about it is reported (synchronous:
        the log entry that placed it is acknowledged only afterwards)."""
        ...

    async def run(
        self, key: RankKey, job: RankJob | None, control: RankControl, *, resume: bool
    ) -> None:
        """Carry the rank to its end and report it; ``resume``: pick up a rank begun before
        a restart. ``job`` is None when the log no longer describes the rank."""
        ...
