"""A rank's output as bytes in chunks (``services.output.chunks``): any cut resumes exactly,
chunks stay within their size, tails and tracebacks; and the WebSocket's choice of
subprotocol and reading of the key (``services.api.websocket``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.api.websocket import choose_protocol, presented_key
from services.output.chunks import Chunker, first_exception, tail_start

lines_ = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=20)


@given(lines_, st.integers(1, 50), st.integers(0, 900), st.integers(1, 5))
def test_chunks_from_any_offset_are_the_stream_from_there(
    lines: list[bytes], size: int, start: int, batches: int
) -> None:
    stream = b"".join(lines)
    chunker = Chunker(size, start)
    chunks = []
    for i in range(batches):  # fed in batches, flushed after each, as a follow does
        part = lines[i * len(lines) // batches : (i + 1) * len(lines) // batches]
        chunks += chunker.feed(part)
        if (last := chunker.flush()) is not None:
            chunks.append(last)
    assert b"".join(c.data for c in chunks) == stream[start:]
    assert all(0 < len(c.data) <= size for c in chunks)
    ends = [c.end for c in chunks]
    assert ends == sorted(set(ends))
    if chunks:
        assert ends[-1] == len(stream)
        assert all(stream[c.end - len(c.data) : c.end] == c.data for c in chunks)


def test_a_cut_through_a_character_keeps_the_bytes() -> None:
    line = "\U0001f415\n".encode()
    assert Chunker(3).feed([line]) == [(line[:3], 3)]
    resumed = Chunker(3, 2)
    assert resumed.feed([line]) == [(line[2:5], 5)]


def test_tail_start_is_where_the_last_lines_begin() -> None:
    lines = [b"a\n", b"bb\n", b"ccc\n"]
    assert tail_start(lines, 2) == 2
    assert tail_start(lines, 5) == 0
    assert tail_start(lines, 0) == 9


def test_first_exception_is_the_first_traceback_to_its_exception_line() -> None:
    lines = [
        b"loading\n",
        b"Traceback (most recent call last):\n",
        b'  File "train.py", line 3, in <module>\n',
        b"    main()\n",
        b"ValueError: bad\n",
        b"after\n",
        b"Traceback (most recent call last):\n",
    ]
    assert first_exception(lines) == lines[1:5]
    assert first_exception([b"fine\n"]) == []


def test_the_subprotocol_is_the_servers_first_choice_among_those_offered() -> None:
    served = ["graphql-transport-ws", "graphql-ws"]
    assert choose_protocol(["graphql-ws", "graphql-transport-ws"], served) == served[0]
    assert choose_protocol(["graphql-ws"], served) == "graphql-ws"
    assert choose_protocol([], served) == "graphql-ws"
    assert choose_protocol([], ["graphql-transport-ws"]) is None
    assert choose_protocol(["other"], served) is None


def test_the_key_is_the_authorization_of_connection_init() -> None:
    assert presented_key({"Authorization": "rpk_a_b"}) == "rpk_a_b"
    assert presented_key({"Authorization": "Bearer rpk_a_b"}) == "rpk_a_b"
    assert presented_key({}) is None
    assert presented_key(None) is None
    assert presented_key({"Authorization": 3}) is None
