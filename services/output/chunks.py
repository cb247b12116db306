"""A rank's output as one stream of bytes, cut into chunks with absolute offsets: what MAPI's
``getRunLogsV2`` sends (``reference/mapi.md`` section 5.9). Pure: lines' bytes in, chunks out.

The stream is every stored line as ``mcli logs`` prints it (``formats.Record.shown``: the
bytes as they came, runplane's marker, a newline), one after another; an offset is a position
in it, counted from the rank's first line.

Invariants:
- Stored lines never change (archiving keeps them and their ids), so the same lines give the
  same bytes and an offset taken from one read resumes another exactly: nothing repeated,
  nothing skipped. A resume inside a line starts inside it (bytes, not characters: the
  client decodes UTF-8 across chunks itself).
- A chunk holds at most ``size`` bytes; ``end`` is the offset just after its last byte.
- No byte index is kept, so finding an offset (a resume, or the start of the last ``tail``
  lines) counts the bytes of every line before it: one read of the rank's output so far.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

TRACEBACK = b"Traceback (most recent call last):"


class Chunk(NamedTuple):
    data: bytes
    end: int  # the absolute offset just after ``data``


class Chunker:
    """Cuts the stream fed to it, line by line, into chunks of at most ``size`` bytes, dropping
    every byte before offset ``start``."""

    def __init__(self, size: int, start: int = 0) -> None:
        if size < 1:
            raise ValueError("a chunk holds at least one byte")
        self.size = size
        self.start = max(start, 0)
        self.position = 0  # offset of the next byte fed
        self._pending = bytearray()

    def feed(self, lines: Iterable[bytes]) -> list[Chunk]:
        """The chunks filled by ``lines``; what is left waits for more (or ``flush``)."""
        full: list[Chunk] = []
        for line in lines:
            begin = self.position
            self.position += len(line)
            if self.position <= self.start:
                continue
            self._pending += line[max(self.start - begin, 0) :]
            while len(self._pending) >= self.size:
                full.append(self._take(self.size))
        return full

    def flush(self) -> Chunk | None:
        """The bytes fed and not sent yet, as one chunk, if any."""
        return self._take(len(self._pending)) if self._pending else None

    def _take(self, count: int) -> Chunk:
        data = bytes(self._pending[:count])
        del self._pending[:count]
        return Chunk(data, self.position - len(self._pending))


def tail_start(lines: Sequence[bytes], count: int) -> int:
    """The offset where the last ``count`` of ``lines`` (the stream from its start) begin."""
    if count <= 0:
        return sum(len(line) for line in lines)
    return sum(len(line) for line in lines[:-count])


def first_exception(lines: Sequence[bytes]) -> list[bytes]:
    """The first Python traceback in ``lines``: from its ``Traceback (most recent call
    last):`` line to the exception line (the first line after it that is not indented), or
    nothing if there is none."""
    for begin, line in enumerate(lines):
        if line.lstrip().startswith(TRACEBACK):
            indent = len(line) - len(line.lstrip())
            for end in range(begin + 1, len(lines)):
                text = lines[end][indent:]
                if text.strip() and not text[:1].isspace():
                    return list(lines[begin : end + 1])
            return list(lines[begin:])
    return []
