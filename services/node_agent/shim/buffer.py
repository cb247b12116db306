"""A bounded buffer of output entries that never drops a line silently.

Invariants:
- ``put`` never blocks: a rank writing 100k lines/s, or a log server that is down, cannot
  stall whoever reads the rank's output.
- It holds at most ``max_lines`` entries and about ``max_bytes`` bytes. A line that does not
  fit is counted; when lines fit again (or at ``finish``), one dropped-lines marker takes the
  place of the lost run of lines, in order.
- Entries leave in the order they came (``take``); a batch that could not be sent goes back to
  the front (``give_back``).

Pure (no IO, no clock, standard library only): the agent's asynchronous pump and the shim's
threaded one share it; each passes the functions that build an entry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

Entry = dict[bytes, bytes]
#: (source, the line, the bytes cut from its end) -> the entry
MakeLine = Callable[[bytes, bytes, int], Entry]
#: the number of lines lost -> the marker entry
MakeDropped = Callable[[int], Entry]

_OVERHEAD = 64  # bytes an entry costs beyond its line, roughly


def _size(entry: Entry) -> int:
    return len(entry[b"l"]) + _OVERHEAD


class LineBuffer:
    def __init__(
        self, make_line: MakeLine, make_dropped: MakeDropped, *, max_lines: int, max_bytes: int
    ) -> None:
        self.make_line = make_line
        self.make_dropped = make_dropped
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.dropped = 0  # lines lost, in all
        self._entries: deque[Entry] = deque()
        self._bytes = 0
        self._dropping = 0  # lines lost since the last marker

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, source: bytes, line: bytes, cut: int = 0) -> bool:
        """Keep the line if it fits; False if it was dropped (and counted)."""
        if len(self._entries) >= self.max_lines or self._bytes + len(line) > self.max_bytes:
            self._dropping += 1
            self.dropped += 1
            return False
        self._mark_dropped()
        self._append(self.make_line(source, line, cut))
        return True

    def finish(self) -> None:
        """No more lines: a run of lost lines at the end gets its marker too."""
        self._mark_dropped()

    def take(self, n: int) -> list[Entry]:
        batch = [self._entries.popleft() for _ in range(min(n, len(self._entries)))]
        self._bytes -= sum(_size(entry) for entry in batch)
        return batch

    def give_back(self, batch: list[Entry]) -> None:
        self._entries.extendleft(reversed(batch))
        self._bytes += sum(_size(entry) for entry in batch)

    def _mark_dropped(self) -> None:
        if self._dropping:
            self._append(self.make_dropped(self._dropping))
            self._dropping = 0

    def _append(self, entry: Entry) -> None:
        self._entries.append(entry)
        self._bytes += _size(entry)
