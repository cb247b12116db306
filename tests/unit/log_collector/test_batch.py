"""Planning a batch of ingest entries: one write per line under its own id, capped and marked,
malformed entries rejected with the reason."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from events import keys
from events.model import RankExited, Reason
from services.log_collector.batch import cap, plan
from services.log_collector.events import rank_failed
from services.output import ingest


def test_each_line_becomes_a_write_to_its_rank_stream_under_its_own_id() -> None:
    entries = [
        (b"1-0", ingest.ingest_fields("run-a", 0, 1, ingest.STDOUT, b"one")),
        (b"1-1", ingest.ingest_fields("run-a", 0, 0, ingest.STDERR, b"two")),
        (b"2-0", ingest.ingest_fields("run-b", 3, 0, ingest.STDOUT, b"three")),
    ]
    batch = plan(entries)
    assert [(w.stream, w.id, w.fields) for w in batch.writes] == [
        (keys.rank_log("run-a", 0, 1), b"1-0", {b"s": b"o", b"l": b"one"}),
        (keys.rank_log("run-a", 0, 0), b"1-1", {b"s": b"e", b"l": b"two"}),
        (keys.rank_log("run-b", 3, 0), b"2-0", {b"s": b"o", b"l": b"three"}),
    ]
    assert batch.ranks == {("run-a", 0): {0, 1}, ("run-b", 3): {0}}
    assert batch.rejects == []


def test_entries_that_are_not_lines_are_rejected_with_the_reason() -> None:
    batch = plan(
        [
            (b"1-0", {b"r": b"x", b"a": b"0", b"l": b"no rank"}),
            (b"1-1", {b"r": b"x", b"a": b"zero", b"k": b"0", b"l": b"bad attempt"}),
            (b"1-2", {b"r": b"x", b"a": b"0", b"k": b"0"}),
            (b"1-3", {}),  # a pending entry whose body was trimmed away
            (b"1-4", ingest.ingest_fields("x", 0, 0, ingest.STDOUT, b"fine")),
        ]
    )
    assert [w.id for w in batch.writes] == [b"1-4"]
    assert [(r.id, r.why) for r in batch.rejects] == [
        (b"1-0", "not an output line: field b'k' missing"),
        (b"1-1", "not an output line: run b'x', attempt b'zero', rank b'0'"),
        (b"1-2", "not an output line: field b'l' missing"),
        (b"1-3", "not an output line: field b'r' missing"),
    ]


@given(size=st.integers(0, 3 * ingest.MAX_LINE), already=st.none() | st.integers(1, 10**9))
def test_no_stored_line_is_longer_than_the_cap_and_every_cut_byte_is_counted(
    size: int, already: int | None
) -> None:
    marker = None if already is None else b"truncated:%d" % already
    line, new_marker = cap(b"a" * size, marker)
    assert len(line) == min(size, ingest.MAX_LINE)
    cut = max(0, size - ingest.MAX_LINE) + (already or 0)
    assert new_marker == (b"truncated:%d" % cut if cut else None)


def test_capping_keeps_other_markers() -> None:
    assert cap(b"b" * (ingest.MAX_LINE + 3), b"dropped:2") == (
        b"b" * ingest.MAX_LINE,
        b"truncated:3,dropped:2",
    )


def _exited(**outcome: object) -> RankExited:
    return RankExited(id="e", actor="a", run_id="r", rank=0, node="n", **outcome)  # type: ignore[arg-type]


def test_which_rank_exits_are_failures() -> None:
    assert rank_failed(_exited(exit_code=1))
    assert rank_failed(_exited(exit_code=None, signal=9))
    assert rank_failed(_exited(reason=Reason(category="user", code="OOMKilled")))
    assert rank_failed(_exited(reason=Reason(category="system", code="NodeFailure")))
    assert not rank_failed(_exited(exit_code=0))
    assert not rank_failed(_exited(exit_code=None))  # no process ever ran, no reason given
    assert not rank_failed(
        _exited(exit_code=143, reason=Reason(category="stopped", code="Stopped"))
    )
    assert not rank_failed(_exited(reason=Reason(category="preempted", code="Preempted")))
