"""Errors of the contract. Each carries the data a caller needs to act on it."""

from __future__ import annotations


class EventsError(Exception):
    """Root of every error raised by the ``events`` package."""


class UndecodableEvent(EventsError):
    """A log entry that is not a known event. Permanent: retrying cannot fix it."""

    def __init__(self, position: str, why: str) -> None:
        super().__init__(f"log entry {position}: {why}")
        self.position = position
        self.why = why


class IllegalTransition(EventsError):
    """The lifecycle rules refuse an event. Permanent for that event in that state."""

    def __init__(self, aggregate: str, event_type: str, why: str) -> None:
        super().__init__(f"{aggregate}: {event_type} refused: {why}")
        self.aggregate = aggregate
        self.event_type = event_type
        self.why = why
