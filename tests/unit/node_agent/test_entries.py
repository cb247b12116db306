"""The shim's ingest entries are the entries of ``services.output.ingest``, field for field."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.node_agent.shim.entries import STDERR, STDOUT, Entries
from services.node_agent.shim.lines import LineSplitter
from services.output import ingest

_ids = st.text(min_size=1, max_size=40)
_small = st.integers(0, 10_000)


@given(_ids, _small, _small, st.sampled_from([STDOUT, STDERR]), st.binary(max_size=200))
def test_a_line_is_the_entry_output_builds(
    run_id: str, attempt: int, rank: int, source: bytes, line: bytes
) -> None:
    assert Entries(run_id, attempt, rank).line(source, line) == ingest.ingest_fields(
        run_id, attempt, rank, source, line
    )


@given(_ids, st.integers(0, 3 * ingest.MAX_LINE))
def test_a_line_cut_by_the_splitter_is_the_entry_output_builds_of_the_whole_line(
    run_id: str, extra: int
) -> None:
    whole = b"x" * (ingest.MAX_LINE + extra)
    [(kept, cut)] = LineSplitter(ingest.MAX_LINE).feed(whole + b"\n")
    entry = Entries(run_id, 1, 2).line(STDOUT, kept, cut)
    assert entry == ingest.ingest_fields(run_id, 1, 2, STDOUT, whole)


@given(_ids, _small, _small, st.integers(1, 10**9))
def test_a_dropped_marker_is_the_one_output_builds(
    run_id: str, attempt: int, rank: int, count: int
) -> None:
    assert Entries(run_id, attempt, rank).dropped(count) == ingest.dropped_fields(
        run_id, attempt, rank, count
    )
