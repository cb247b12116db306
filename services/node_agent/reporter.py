"""Reporting what happens to a rank: events appended through the lifecycle rules.

Every report reads the run (or takes it as the agent folded it from its inbox, which the
append's version check holds to the log's), checks that the rank still holds its GPUs
(``plan.locate``), builds the events from that state, checks them against the rules and
appends them on the version it read (``EventStore.update_run``). So:

- a report about a rank the log says is over raises ``RankGone`` (the attempt moved on, the
  scheduler released a lost node's ranks): the caller stops working on that rank;
- a setup report while the attempt is stopping raises ``SetupAborted`` with the reason;
- a log server that does not answer is waited for (with back-off), never skipped: an exit
  that happened is always reported;
- the ``rank.running`` of the attempt's last rank to start carries the attempt's
  ``attempt.running`` in the same append (``AttemptState.runs_with``): RUNNING comes one
  append after the command starts, not a scheduler's round trip later;
- the clean exit (code 0, no reason) of the attempt's last rank, all the others clean too,
  carries the attempt's end, ``attempt.terminating`` and ``attempt.completed``, in the same
  append (``AttemptState.completes_with``): COMPLETED, and the GPUs free, one append after the
  command ends. Any other end is the scheduler's to decide (retries, deletion, the first
  failure), and so is a run being deleted (its end and ``run.deleted`` go together).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog
from redis import exceptions as redis_errors

from events.errors import IllegalTransition
from events.lifecycle import AttemptState, RankState, RunState, clean_exit
from events.model import (
    AnyRunEvent,
    AttemptCompleted,
    AttemptRunning,
    AttemptTerminating,
    RankExited,
    RankRunning,
)
from events.status import RunStatus
from services.core.archive import ArchiveMissing
from services.core.errors import TemporaryStoreError
from services.core.store import EventStore
from services.node_agent.errors import RankGone, SetupAborted
from services.node_agent.job import RankKey
from services.node_agent.plan import locate, stop_reason

log = structlog.get_logger(__name__)

Build = Callable[[AttemptState, RankState], Sequence[AnyRunEvent]]
#: A rank's GPU usage summary when it ends: (mean utilization %, peak memory MiB), or None.
UsageOf = Callable[[RankKey], "tuple[int, int] | None"]


def new_id() -> str:
    return uuid.uuid4().hex


class Reporter:
    def __init__(self, store: EventStore, node: str, actor: str) -> None:
        self.store = store
        self.node = node
        self.actor = actor
        self.usage: UsageOf | None = None  # set by an agent that samples its GPUs
        #: The run as the agent folded it from its inbox (``EventStore.update_run``'s
        #: ``known``): a report decided on it saves a read of the run's history.
        self.known: Callable[[str], RunState | None] | None = None

    def fields(self, key: RankKey) -> dict[str, Any]:
        """The envelope of an event about ``key``, with a fresh id."""
        return {
            "id": new_id(),
            "actor": self.actor,
            "run_id": key.run_id,
            "attempt": key.attempt,
            "rank": key.rank,
            "node": self.node,
        }

    async def report(self, key: RankKey, build: Build, *, setup: bool = False) -> None:
        usage: list[tuple[int, int] | None] = []  # asked once: a retried append keeps it

        def with_usage(event: AnyRunEvent) -> AnyRunEvent:
            if not isinstance(event, RankExited) or self.usage is None:
                return event
            if not usage:
                usage.append(self.usage(key))
            if usage[0] is None:
                return event
            util, peak = usage[0]
            return msgspec.structs.replace(event, gpu_utilization=util, gpu_memory_peak_mib=peak)

        def decide(state: RunState | None) -> Sequence[AnyRunEvent]:
            attempt, rank = locate(state, key)
            if setup and (reason := stop_reason(attempt)) is not None:
                raise SetupAborted(reason)
            events = _with_running(attempt, [with_usage(event) for event in build(attempt, rank)])
            return events if state is None or state.delete_requested else _with_end(attempt, events)

        backoff = 0.1
        while True:
            try:
                known = None if self.known is None else self.known(key.run_id)
                await self.store.update_run(key.run_id, decide, known=known)
            except IllegalTransition as exc:
                raise RankGone(exc.why) from exc
            except ArchiveMissing as exc:
                # Only a run at rest goes to the archive: its ranks are long over.
                raise RankGone(f"the run is archived ({exc})") from exc
            except (
                TemporaryStoreError,
                redis_errors.ConnectionError,
                redis_errors.TimeoutError,
            ) as exc:
                # Valkey down or unreachable (its reads raise redis' own errors, not the
                # store's): an exit that happened is reported once it is back.
                log.warning("report.retry", rank=str(key), error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            return


def _with_running(attempt: AttemptState, events: list[AnyRunEvent]) -> list[AnyRunEvent]:
    """``events``, with the attempt's ``attempt.running`` after a ``rank.running`` that
    makes every rank of it run (the version check of the append makes "last" exact: of two
    ranks' reports racing, the second re-reads and sees the first)."""
    for index, event in enumerate(events):
        if isinstance(event, RankRunning) and attempt.runs_with(event.rank):
            running = AttemptRunning(
                id=new_id(), actor=event.actor, run_id=event.run_id, attempt=event.attempt
            )
            return [*events[: index + 1], running, *events[index + 1 :]]
    return events


def _with_end(attempt: AttemptState, events: list[AnyRunEvent]) -> list[AnyRunEvent]:
    """``events``, with the attempt's end after a clean ``rank.exited`` that leaves every rank
    of it exited cleanly (the version check makes "last" exact, as for ``_with_running``)."""
    for index, event in enumerate(events):
        if (
            isinstance(event, RankExited)
            and clean_exit(event.exit_code, event.reason)
            and attempt.completes_with(event.rank)
        ):
            actor, run_id, number = event.actor, event.run_id, event.attempt
            end: list[AnyRunEvent] = [
                AttemptCompleted(id=new_id(), actor=actor, run_id=run_id, attempt=number)
            ]
            if attempt.status is not RunStatus.TERMINATING:
                terminating = AttemptTerminating(
                    id=new_id(), actor=actor, run_id=run_id, attempt=number, reason=None
                )
                end.insert(0, terminating)
            return [*events[: index + 1], *end, *events[index + 1 :]]
    return events
