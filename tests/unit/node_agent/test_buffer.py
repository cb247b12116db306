"""The bounded output buffer: order kept, never more than its bounds, every lost line counted
and marked where it was lost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.node_agent.shim.buffer import Entry, LineBuffer


def make_line(source: bytes, line: bytes, cut: int) -> Entry:
    return {b"s": source, b"l": line}


def make_dropped(count: int) -> Entry:
    return {b"s": b"e", b"l": b"", b"m": b"dropped:%d" % count}


# A script: put a line (True) or send a batch of n entries (an int).
_steps = st.lists(st.one_of(st.just(True), st.integers(1, 5)), max_size=200)


@given(_steps, st.integers(1, 10))
def test_every_line_is_sent_or_counted_in_a_marker_in_order(steps: list[object], cap: int) -> None:
    buffer = LineBuffer(make_line, make_dropped, max_lines=cap, max_bytes=10**9)
    sent: list[Entry] = []
    put = 0
    for step in steps:
        if step is True:
            buffer.put(b"o", b"%d" % put)
            put += 1
        else:
            assert isinstance(step, int)
            sent += buffer.take(step)
        assert len(buffer) <= cap + 1  # the bound, plus at most one marker
    buffer.finish()
    sent += buffer.take(len(buffer))
    lines = [int(entry[b"l"]) for entry in sent if b"m" not in entry]
    dropped = [int(entry[b"m"].split(b":")[1]) for entry in sent if b"m" in entry]
    assert lines == sorted(lines)  # in order
    assert len(lines) + sum(dropped) == put  # nothing lost silently
    assert sum(dropped) == buffer.dropped


def test_the_marker_stands_where_the_lines_were_lost() -> None:
    buffer = LineBuffer(make_line, make_dropped, max_lines=2, max_bytes=10**9)
    for i in range(5):
        buffer.put(b"o", b"%d" % i)
    first = buffer.take(10)
    buffer.put(b"o", b"5")
    assert [e[b"l"] for e in first] == [b"0", b"1"]
    assert buffer.take(10) == [make_dropped(3), make_line(b"o", b"5", 0)]


def test_bytes_are_bounded_too_and_a_batch_given_back_goes_first() -> None:
    buffer = LineBuffer(make_line, make_dropped, max_lines=100, max_bytes=1000)
    assert buffer.put(b"o", b"x" * 500)
    assert not buffer.put(b"o", b"y" * 500)  # over the bytes bound
    batch = buffer.take(1)
    assert buffer.put(b"o", b"z")
    buffer.give_back(batch)
    assert [e[b"l"][:1] for e in buffer.take(10)] == [b"x", b"", b"z"]
