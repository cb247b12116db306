"""Splitting a byte stream into lines, never holding more than ``max_line`` bytes of one.

A line longer than ``max_line`` is cut: its first ``max_line`` bytes are kept and the number
of bytes cut is returned with it, so a writer that never prints a newline cannot exhaust the
memory of whoever reads it. Bytes are kept as they came (no decoding, ``\\r`` kept).

Pure: no IO, standard library only (the shim uses it).
"""

from __future__ import annotations

#: (the line without its newline, the number of bytes cut from its end)
Line = tuple[bytes, int]


class LineSplitter:
    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._partial = bytearray()
        self._cut = 0

    def feed(self, chunk: bytes) -> list[Line]:
        """The lines ``chunk`` completes; an unfinished last line waits for the next chunk."""
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            self._keep(chunk)
            return []
        self._keep(parts[0])
        lines = [self._take()]
        limit = self.max_line
        lines.extend(
            (part, 0) if len(part) <= limit else (part[:limit], len(part) - limit)
            for part in parts[1:-1]
        )
        self._keep(parts[-1])
        return lines

    def close(self) -> Line | None:
        """The last line, if the stream ended without a newline."""
        if not self._partial and not self._cut:
            return None
        return self._take()

    def _keep(self, piece: bytes) -> None:
        room = self.max_line - len(self._partial)
        if len(piece) <= room:
            self._partial += piece
        else:
            self._partial += piece[:room]
            self._cut += len(piece) - room

    def _take(self) -> Line:
        line = (bytes(self._partial), self._cut)
        self._partial.clear()
        self._cut = 0
        return line
