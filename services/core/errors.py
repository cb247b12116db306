"""Errors of the event store. Temporary ones may be retried; permanent ones may not."""

from __future__ import annotations

from services.core.passwords import redacted


class StoreError(Exception):
    """Root of the event store's errors."""


class TemporaryStoreError(StoreError):
    """Retrying later may succeed."""


class StoreUnavailable(TemporaryStoreError):
    """The server did not answer (down, restarting, unreachable)."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(
            f"the event log at {redacted(url)} is unreachable ({why}); check that the server runs "
            "(`mcli dev status` for the local stack) and RUNPLANE_REDIS_URL"
        )
        self.url = url


class VersionConflict(TemporaryStoreError):
    """Somebody appended to the aggregate since it was read: re-read and re-decide."""

    def __init__(self, aggregate: str, expected: int, actual: int) -> None:
        super().__init__(f"{aggregate}: expected version {expected}, found {actual}")
        self.aggregate = aggregate
        self.expected = expected
        self.actual = actual


class Fenced(StoreError):
    """The writer's fencing token is no longer current: it lost its lease. Permanent. Said of
    an append to an aggregate, or of the scheduler's read of a partition's log."""

    def __init__(self, aggregate: str, holder: str) -> None:
        super().__init__(f"{aggregate}: refused, the lease is held by {holder or 'nobody'}")
        self.aggregate = aggregate
        self.holder = holder


class MixedAggregates(StoreError):
    """One append holds the events of one aggregate only."""
