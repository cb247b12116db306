"""A read of the archive (``Archive.read``): the entries after a position, up to another, a
page at a time, across any number of segments, as one list of the log would give them."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from events import codec
from services.core.archive import Archive, Entry, Position, parse

DAY = 86_400_000


def entry(ms: int, seq: int) -> Entry:
    flat = [codec.KIND, b"a@1", codec.BODY, b"{}", codec.VERSION, str(seq + 1).encode()]
    return f"{ms}-{seq}", flat


# The log: entries 7 ms apart (two in some milliseconds), across a day's end.
LOG = [entry(DAY - 100 + 7 * (n // 2), n % 2) for n in range(60)]
POSITIONS = [parse(position) for position, _ in LOG]


def expected(start: Position, upto: Position, count: int, listed: int) -> list[Entry]:
    return [e for e, p in zip(LOG[:listed], POSITIONS, strict=False) if start < p <= upto][:count]


@settings(max_examples=30, deadline=None)
@given(
    cuts=st.lists(st.integers(1, len(LOG) - 1), unique=True, max_size=12).map(sorted),
    start=st.integers(-1, len(LOG)),
    span=st.integers(0, len(LOG)),
    count=st.integers(1, 25),
)
def test_a_read_gives_what_the_log_holds_there(
    cuts: list[int], start: int, span: int, count: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Archive(Path(tmp))
        bounds = [0, *cuts, len(LOG)]
        listed = 0
        for low, high in itertools.pairwise(bounds):
            day = [e for e in LOG[low:high] if parse(e[0])[0] < DAY]
            for part in (day, LOG[low + len(day) : high]):  # a segment holds one day's
                if part:
                    archive.add(archive.write(part))
            listed = high
            # Read after each segment is listed: a read sees the manifest it replaced.
            begin = (0, 0) if start < 0 else POSITIONS[min(start, len(LOG) - 1)]
            upto = POSITIONS[min(max(start, 0) + span, len(LOG) - 1)]
            assert archive.read(begin, upto, count) == expected(begin, upto, count, listed)
