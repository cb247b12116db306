"""What the run filters take, as a user types them: times and statuses, one rule for the CLI's
flags (``--after 2h``, ``--status running,queued``) and the SDK's arguments
(``get_runs(after="2h", statuses="RUNNING")``).

Times are a date or a date and time (ISO 8601, local time unless it says otherwise), a time
ago (``30s``, ``30m``, ``2h``, ``1d``, ``1w``), or a ``datetime`` (naive ones are local time
too). Statuses are ``RunStatus`` names, case-insensitive: one, a list, or a comma list. A bad
value is a ``ValueError`` that says what is accepted; the CLI shows it as a usage error.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from events.spans import duration_s, seconds_of
from events.status import RunStatus

__all__ = ["duration_s", "moment_ms", "status_set"]


def moment_ms(value: str | datetime, now: datetime | None = None) -> int:
    """The time ``value`` names, as ms since the epoch (a time ago counts back from ``now``)."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    text = value.strip()
    ago_s = seconds_of(text)
    if ago_s is not None:
        ago = timedelta(seconds=ago_s)
        return int(((now or datetime.now(tz=UTC)) - ago).timestamp() * 1000)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected a date/time (2026-11-24, 2026-11-24T13:00) or a time ago (30m, 2h, 1d), "
            f"got {value!r}"
        ) from None
    return int(parsed.timestamp() * 1000)  # naive: local time


def status_set(value: str | Iterable[str]) -> frozenset[RunStatus]:
    """The statuses ``value`` names: one (a ``RunStatus`` is a str too), a comma list, or a
    list of either."""
    parts = value.split(",") if isinstance(value, str) else value
    return frozenset(RunStatus.parse(part.strip()) for part in parts if part.strip())
