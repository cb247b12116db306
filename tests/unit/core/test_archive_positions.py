"""The archive's position arithmetic: what comes just before and after a log position, and the
day (UTC, log time) an entry's segment belongs to."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.core.archive import MAX_SEQ, after, before, day_of, parse, show

positions = st.tuples(st.integers(1, 2**48), st.integers(0, MAX_SEQ))


@given(positions)
def test_before_and_after_are_the_neighbours(position: tuple[int, int]) -> None:
    assert before(position) < position < after(position)
    assert before(after(position)) == position
    assert after(before(position)) == position
    assert parse(show(position)) == position


def test_neighbours_across_a_millisecond() -> None:
    assert before((5, 0)) == (4, MAX_SEQ)
    assert after((4, MAX_SEQ)) == (5, 0)
    assert parse("7") == (7, 0)


def test_the_day_is_the_log_times_in_utc() -> None:
    assert day_of((0, 0)) == "1970-01-01"
    assert day_of((86_400_000 - 1, 3)) == "1970-01-01"
    assert day_of((86_400_000, 0)) == "1970-01-02"
