"""What one round of the scheduler decides, and how its events are enveloped.

A ``Decision`` is one append: the events of one aggregate (a run or a node) and the version the
decision was made on, so a decision made on stale state loses the race instead of acting twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from events.model import AnyEvent

NewId = Callable[[], str]


class Context(NamedTuple):
    """What a pure decision needs from outside: the log's time, fresh ids, who writes."""

    now_ms: int
    new_id: NewId
    actor: str


class Decision(NamedTuple):
    aggregate: str  # ``run:<id>`` or ``node:<name>``
    events: Sequence[AnyEvent]
    expected_version: int

    @property
    def run_id(self) -> str | None:
        kind, _, name = self.aggregate.partition(":")
        return name if kind == "run" else None


def decision(events: Sequence[AnyEvent], expected_version: int) -> Decision:
    aggregate = events[0].aggregate
    assert all(event.aggregate == aggregate for event in events), "one aggregate per decision"
    return Decision(aggregate, list(events), expected_version)
