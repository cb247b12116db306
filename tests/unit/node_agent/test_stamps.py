"""Timestamped log lines: stamps that sort in time order, and where a stream stands when lines
read in one go share a stamp."""

from __future__ import annotations

from services.node_agent.stamps import Position, Skip, parse_stamp, split_stamp

A = "2026-01-01T00:00:01.5Z"
B = "2026-01-01T00:00:01.500000001Z"


def test_stamps_sort_in_time_order() -> None:
    first, second = parse_stamp(A), parse_stamp(B)
    assert first is not None
    assert second is not None
    assert first < second
    assert parse_stamp("2026-01-01T00:00:01+00:00") is None
    assert split_stamp(f"{A} hello world".encode()) == (first, A, b"hello world")
    assert split_stamp(b"no stamp") == (None, "", b"no stamp")


def test_lines_sharing_a_stamp_are_counted_and_skipped_exactly() -> None:
    a, b = parse_stamp(A), parse_stamp(B)
    assert a is not None
    assert b is not None
    position = Position(None)
    for stamp, text in ((a, A), (a, A), (b, B), (b, B)):
        position.sent(stamp, text)
    recorded = str(position)
    assert recorded == f"{B} 2"

    again = Position(recorded)
    skip = Skip(again.stamp, again.count)
    reread = [a, a, b, b, b]  # the log read again: a third line stamped B is new
    assert [skip.sent_before(stamp) for stamp in reread] == [True, True, True, True, False]
    assert Position(f"{A}").count == 1  # recorded before counts were kept
