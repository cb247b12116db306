"""Output lines that carry their time: what a container engine's log gives (the kubelet's
``timestamps=true``, ``podman logs --timestamps``), each line after an RFC 3339 timestamp.

A follower resumes after the last line it sent by comparing stamps, so the pair sorts in time
order where the text would not (trailing zeros are dropped from the fraction). Pure.
"""

from __future__ import annotations

Stamp = tuple[str, int]  # (seconds, as "YYYY-MM-DDTHH:MM:SS"; nanoseconds)


def parse_stamp(text: str) -> Stamp | None:
    """An RFC 3339 timestamp in UTC (``Z``, a fraction of 0 to 9 digits) as a pair that sorts
    in time order."""
    if not text.endswith("Z") or len(text) < 20:
        return None
    seconds, _, fraction = text[:-1].partition(".")
    if len(seconds) != 19 or not (fraction.isdigit() or not fraction):
        return None
    return seconds, int(fraction.ljust(9, "0")[:9] or 0)


def split_stamp(line: bytes) -> tuple[Stamp | None, str, bytes]:
    """(its time, the timestamp's text, the line without it)."""
    head, _, rest = line.partition(b" ")
    text = head.decode(errors="replace")
    stamp = parse_stamp(text)
    return (stamp, text, rest) if stamp is not None else (None, "", line)
