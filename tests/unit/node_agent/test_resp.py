"""The shim's minimal Redis protocol: commands encoded, replies read."""

from __future__ import annotations

import io

import pytest

from services.core.resp import encode
from services.node_agent.errors import RespError
from services.node_agent.shim.resp import read_reply


def test_encode() -> None:
    assert encode([b"XADD", "s", 5, b"\r\n\x00"]) == (
        b"*4\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n5\r\n$3\r\n\r\n\x00\r\n"
    )


def test_read_replies() -> None:
    stream = io.BytesIO(
        b"+OK\r\n:42\r\n$5\r\n1-0\r\n\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n-ERR wrong type\r\n"
    )
    assert read_reply(stream) == b"OK"
    assert read_reply(stream) == 42
    assert read_reply(stream) == b"1-0\r\n"  # a bulk string is read by its length
    assert read_reply(stream) is None
    assert read_reply(stream) == [b"a", 1]
    error = read_reply(stream)
    assert isinstance(error, RespError)
    assert str(error) == "ERR wrong type"


@pytest.mark.parametrize("data", [b"", b"+OK", b"$5\r\nab", b"?what\r\n"])
def test_a_cut_or_foreign_reply_is_a_connection_error(data: bytes) -> None:
    with pytest.raises(ConnectionError):
        read_reply(io.BytesIO(data))
