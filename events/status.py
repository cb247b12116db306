"""RunStatus, with the values, order and helpers of mcli's ``RunStatus``.

Invariants: the order is fixed (UNKNOWN < PENDING < ... < FAILED); only COMPLETED, STOPPED
and FAILED are terminal; STARTING, RUNNING and TERMINATING hold GPUs (``is_active``), and
PENDING and QUEUED wait (``is_waiting``). Every module asks these methods; none lists the
sets. Comparing a status with anything else raises TypeError.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

_SEPARATORS = re.compile(r"[\s_-]")


class RunStatus(StrEnum):
    """The phase of a run (of its latest attempt), as mcli names it."""

    UNKNOWN = "UNKNOWN"
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def order(self) -> int:
        return _ORDER[self]

    @property
    def display_name(self) -> str:
        return self.value.title()

    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def is_active(self) -> bool:
        """Holding GPUs: STARTING, RUNNING or TERMINATING (the span that GPU usage counts)."""
        return self in _HOLDS_GPUS

    def is_waiting(self) -> bool:
        """Not yet placed: PENDING or QUEUED."""
        return self in _WAITING

    def before(self, other: RunStatus, inclusive: bool = False) -> bool:
        self._check(other)
        return self.order < other.order or (inclusive and self is other)

    def after(self, other: RunStatus, inclusive: bool = False) -> bool:
        self._check(other)
        return self.order > other.order or (inclusive and self is other)

    @classmethod
    def from_string(cls, value: str) -> RunStatus:
        """Case-insensitive, camelCase accepted; anything unknown is UNKNOWN."""
        return _BY_KEY.get(_SEPARATORS.sub("", value).upper(), cls.UNKNOWN)

    @classmethod
    def parse(cls, value: str) -> RunStatus:
        """A status a user named, read as ``from_string`` reads it; ``ValueError`` naming the
        valid names for anything else (``from_string`` would make it UNKNOWN)."""
        status = cls.from_string(value)
        if status is cls.UNKNOWN and _SEPARATORS.sub("", value).upper() != cls.UNKNOWN.value:
            names = ", ".join(s.display_name for s in cls if s is not cls.UNKNOWN)
            raise ValueError(f"unknown status {value!r} (one of {names})")
        return status

    def _check(self, other: Any) -> None:
        if not isinstance(other, RunStatus):
            raise TypeError(f"cannot compare RunStatus with {type(other).__name__}")

    def __lt__(self, other: Any) -> bool:
        return self.before(other)

    def __le__(self, other: Any) -> bool:
        return self.before(other, inclusive=True)

    def __gt__(self, other: Any) -> bool:
        return self.after(other)

    def __ge__(self, other: Any) -> bool:
        return self.after(other, inclusive=True)

    def __str__(self) -> str:
        return self.value


_ORDER = {status: i for i, status in enumerate(RunStatus)}
_BY_KEY = {status.value: status for status in RunStatus}
_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.FAILED})
_HOLDS_GPUS = frozenset({RunStatus.STARTING, RunStatus.RUNNING, RunStatus.TERMINATING})
_WAITING = frozenset({RunStatus.PENDING, RunStatus.QUEUED})
