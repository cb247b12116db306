"""Spans of time as people type them: ``30s``, ``30m``, ``2h``, ``1d``, ``1w`` (a number and a
unit). One rule for the CLI's flags (``--after 2h``, ``--before 30d``, ``--expires 30d``) and the
services' settings (``RUNPLANE_RETAIN=7d``)."""

from __future__ import annotations

import re

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|hr|d|w)$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "w": 604800}


def seconds_of(text: str) -> float | None:
    """Seconds of ``text`` if it is a span, else None."""
    match = _SPAN.match(text.strip())
    return float(match[1]) * _UNITS[match[2]] if match else None


def duration_s(value: str) -> float:
    """Seconds of a span typed as a time ago is (``30m``, ``2h``, ``30d``, ``1w``)."""
    seconds = seconds_of(value)
    if seconds is None or seconds <= 0:
        raise ValueError(f"expected a positive span such as 30m, 12h, 30d or 1w, got {value!r}")
    return seconds
