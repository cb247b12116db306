"""Output lines that carry their time: what a container engine's log gives (the kubelet's
``timestamps=true``, ``podman logs --timestamps``), each line after an RFC 3339 timestamp.

A follower resumes after the last line it sent by comparing stamps, so the pair sorts in time
order where the text would not (trailing zeros are dropped from the fraction). Lines read in one
go share a stamp, so where a stream stands is its last stamp and how many lines sent carry it
(``Position``), and a follow that reads the log again skips exactly those (``Skip``). Pure.
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


class Position:
    """How far one stream was sent: the last stamp, and the lines sent with it."""

    def __init__(self, recorded: str | None) -> None:
        text, _, count = (recorded or "").partition(" ")
        self.text = text
        self.stamp = parse_stamp(text) if text else None
        self.count = int(count) if count.isdigit() else 1

    def __str__(self) -> str:
        return f"{self.text} {self.count}"

    def sent(self, stamp: Stamp, text: str) -> None:
        if stamp == self.stamp:
            self.count += 1
        else:
            self.stamp, self.text, self.count = stamp, text, 1


class Skip:
    """The lines of one follow that were sent already: those stamped before ``stamp``, and
    the first ``count`` stamped ``stamp``."""

    def __init__(self, stamp: Stamp | None, count: int) -> None:
        self.stamp = stamp
        self.left = count

    def sent_before(self, stamp: Stamp) -> bool:
        if self.stamp is None or stamp > self.stamp:
            return False
        if stamp < self.stamp:
            return True
        if self.left > 0:
            self.left -= 1
            return True
        return False
