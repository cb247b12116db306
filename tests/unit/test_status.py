"""RunStatus keeps mcli's values, order, helpers and parsing (shared/reference/mcli.md)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from itertools import product
from typing import Any

import pytest

from events.status import RunStatus

S = RunStatus

#: mcli's order, earliest to latest.
ORDER = [
    S.UNKNOWN,
    S.PENDING,
    S.QUEUED,
    S.STARTING,
    S.RUNNING,
    S.TERMINATING,
    S.COMPLETED,
    S.STOPPED,
    S.FAILED,
]
TERMINAL = {S.COMPLETED, S.STOPPED, S.FAILED}
PAIRS = list(product(ORDER, ORDER))


def test_the_statuses_are_mcli_s_and_each_value_is_its_name() -> None:
    assert {status.name for status in RunStatus} == {status.name for status in ORDER}
    for status in RunStatus:
        assert status.value == status.name
        assert str(status) == status.name
        assert RunStatus(status.name) is status


def test_the_order_is_mcli_s() -> None:
    assert sorted(RunStatus) == ORDER
    assert [status.order for status in ORDER] == sorted(status.order for status in ORDER)
    assert len({status.order for status in RunStatus}) == len(ORDER)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_before_and_after_follow_the_order(a: RunStatus, b: RunStatus) -> None:
    i, j = ORDER.index(a), ORDER.index(b)
    assert a.before(b) is (i < j)
    assert a.after(b) is (i > j)
    assert a.before(b, inclusive=True) is (i <= j)
    assert a.after(b, inclusive=True) is (i >= j)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_comparison_operators_follow_the_order(a: RunStatus, b: RunStatus) -> None:
    i, j = ORDER.index(a), ORDER.index(b)
    assert (a < b) is (i < j)
    assert (a <= b) is (i <= j)
    assert (a > b) is (i > j)
    assert (a >= b) is (i >= j)
    assert (a == b) is (i == j)


def test_the_order_is_not_alphabetical() -> None:
    # A StrEnum would compare as strings without the overrides: "FAILED" < "PENDING".
    assert S.PENDING < S.FAILED
    assert S.UNKNOWN < S.COMPLETED
    assert S.TERMINATING < S.COMPLETED


COMPARISONS: list[Callable[[Any, Any], bool]] = [
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
]


@pytest.mark.parametrize("compare", COMPARISONS)
@pytest.mark.parametrize("other", ["RUNNING", "PENDING", 3, 3.5, None, object()])
def test_comparing_with_a_non_status_raises_type_error(
    compare: Callable[[Any, Any], bool], other: object
) -> None:
    with pytest.raises(TypeError):
        compare(S.RUNNING, other)
    with pytest.raises(TypeError):
        compare(other, S.RUNNING)


@pytest.mark.parametrize("method", ["before", "after"])
def test_before_and_after_refuse_a_non_status(method: str) -> None:
    with pytest.raises(TypeError, match="cannot compare RunStatus with str"):
        getattr(S.RUNNING, method)("RUNNING")
    with pytest.raises(TypeError, match="cannot compare RunStatus with int"):
        getattr(S.RUNNING, method)(1, inclusive=True)


@pytest.mark.parametrize("status", ORDER)
def test_only_completed_stopped_and_failed_are_terminal(status: RunStatus) -> None:
    assert status.is_terminal() is (status in TERMINAL)


def test_terminating_is_not_terminal() -> None:
    assert not S.TERMINATING.is_terminal()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("RUNNING", S.RUNNING),
        ("running", S.RUNNING),
        ("Running", S.RUNNING),
        ("rUnNiNg", S.RUNNING),
        ("Pending", S.PENDING),
        ("queued", S.QUEUED),
        ("Starting", S.STARTING),
        ("terminating", S.TERMINATING),
        ("Completed", S.COMPLETED),
        ("stopped", S.STOPPED),
        ("FAILED", S.FAILED),
        ("Unknown", S.UNKNOWN),
        ("", S.UNKNOWN),
        ("bogus", S.UNKNOWN),
        ("RUNNINGG", S.UNKNOWN),
        ("done", S.UNKNOWN),
    ],
)
def test_from_string(text: str, expected: RunStatus) -> None:
    assert RunStatus.from_string(text) is expected


@pytest.mark.parametrize("status", ORDER)
def test_from_string_reads_every_spelling_of_every_status(status: RunStatus) -> None:
    for text in (status.value, status.value.lower(), status.value.title(), status.display_name):
        assert RunStatus.from_string(text) is status


@pytest.mark.parametrize("status", ORDER)
def test_parse_reads_every_status_as_from_string_does(status: RunStatus) -> None:
    for text in (status.value, status.value.lower(), status.display_name, status):
        assert RunStatus.parse(text) is status


@pytest.mark.parametrize("text", ["", "bogus", "DONE", "RUNNINGG"])
def test_parse_refuses_what_is_no_status_and_names_the_valid_ones(text: str) -> None:
    valid = "Pending, Queued, Starting, Running, Terminating, Completed, Stopped, Failed"
    with pytest.raises(ValueError, match=re.escape(f"unknown status {text!r} (one of {valid})")):
        RunStatus.parse(text)


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (S.UNKNOWN, "Unknown"),
        (S.PENDING, "Pending"),
        (S.QUEUED, "Queued"),
        (S.STARTING, "Starting"),
        (S.RUNNING, "Running"),
        (S.TERMINATING, "Terminating"),
        (S.COMPLETED, "Completed"),
        (S.STOPPED, "Stopped"),
        (S.FAILED, "Failed"),
    ],
)
def test_display_name_is_title_case(status: RunStatus, shown: str) -> None:
    assert status.display_name == shown
