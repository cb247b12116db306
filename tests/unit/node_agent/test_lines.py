"""Splitting output into lines, however it is chunked, never holding more than a line's cap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.node_agent.shim.lines import LineSplitter

_chunks = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"")), max_size=20)


def _split(chunks: list[bytes], max_line: int) -> list[tuple[bytes, int]]:
    splitter = LineSplitter(max_line)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    last = splitter.close()
    return [*lines, last] if last is not None else lines


@given(_chunks)
def test_lines_are_the_stream_split_at_newlines_whatever_the_chunks(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()  # a final newline ends the last line; it does not start another
    assert _split(chunks, 10_000) == [(line, 0) for line in expected]


@given(_chunks, st.integers(1, 16))
def test_a_long_line_keeps_its_head_and_counts_what_was_cut(
    chunks: list[bytes], max_line: int
) -> None:
    data = b"".join(chunks)
    full = data.split(b"\n")
    if full[-1] == b"":
        full.pop()
    assert _split(chunks, max_line) == [
        (line[:max_line], max(0, len(line) - max_line)) for line in full
    ]


def test_a_line_without_newline_is_never_held_beyond_the_cap() -> None:
    splitter = LineSplitter(max_line=8)
    for _ in range(1000):
        assert splitter.feed(b"x" * 1000) == []
    assert splitter.feed(b"\nok\n") == [(b"x" * 8, 1_000_000 - 8), (b"ok", 0)]
    assert splitter.close() is None
