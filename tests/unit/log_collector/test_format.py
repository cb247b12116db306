"""The stored line format: per-rank stream entry -> archive record (JSON line) or reply item
(msgpack) -> what a reader shows. Bytes survive exactly; text is decoded with replacement."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.log_collector.batch import plan
from services.output import formats, ingest, reading
from services.output.formats import LogLine, Record
from services.output.reading import ArchiveRequest, Chunk

ids = st.tuples(
    st.integers(min_value=1, max_value=2**45), st.integers(min_value=0, max_value=2**20)
).map(lambda t: f"{t[0]}-{t[1]}")
markers = st.none() | st.sampled_from([b"truncated:12", b"dropped:3", b"late:5-1,truncated:9"])


@given(
    entry_id=ids,
    line=st.binary(max_size=300) | st.text(max_size=100).map(str.encode),
    source=st.sampled_from([b"o", b"e"]),
    marker=markers,
)
def test_a_line_survives_the_archive_and_the_reply_byte_for_byte(
    entry_id: str, line: bytes, source: bytes, marker: bytes | None
) -> None:
    fields = {b"s": source, b"l": line} | ({b"m": marker} if marker else {})
    record = formats.record_of(entry_id.encode(), fields)
    encoded = formats.encode_record(record)
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1  # one line of the file per line of output
    for again in (
        formats.decode_record(encoded),
        reading.decode_chunk(reading.encode_msg(Chunk(lines=[record]))).lines[0],
    ):
        assert again == record
        assert again.raw == line
        assert again.t == int(entry_id.split("-", maxsplit=1)[0])
        shown = again.to_line()
        assert shown.text == line.decode(errors="replace")
        assert shown.source == ("stdout" if source == b"o" else "stderr")
        assert shown.id == entry_id


def test_valid_utf8_is_stored_as_text_and_binary_as_base64() -> None:
    text = formats.encode_record(formats.record_of(b"5-0", {b"s": b"o", b"l": "époch ✓".encode()}))
    assert b'"l":"\xc3\xa9poch \xe2\x9c\x93"' in text
    blob = formats.encode_record(formats.record_of(b"5-1", {b"s": b"e", b"l": b"\xff\x00"}))
    assert b'"b":"/wA="' in blob


def test_markers_are_rendered_for_humans() -> None:
    huge = plan([(b"9-0", ingest.ingest_fields("r", 0, 0, ingest.STDOUT, b"z" * 70_000))])
    record = formats.record_of(b"9-0", huge.writes[0].fields)
    line = record.to_line()
    assert line.marker == f"… [line truncated: {70_000 - ingest.MAX_LINE} bytes cut]"
    assert line.render() == "z" * ingest.MAX_LINE + line.marker

    dropped = formats.record_of(b"9-1", ingest.dropped_fields("r", 0, 0, 500)).to_line()
    assert dropped.marker == "[500 lines dropped]"
    assert dropped.render().endswith(" [500 lines dropped]")
    assert dropped.source == "stderr"

    assert formats.render_marker("late:7-3,truncated:4") == (
        "[stored out of order; sent at 7-3] … [line truncated: 4 bytes cut]"
    )
    assert formats.render_marker("something:new") == "[something:new]"
    assert LogLine(1, "stdout", "plain", None).render() == "plain"


def test_a_request_round_trips() -> None:
    request = ArchiveRequest(id="x", run="r", attempt=2, rank=1, tail=5, after_id="3-4")
    assert reading.decode_request(reading.encode_msg(request)) == request


def _archive(path: Path, count: int) -> list[Record]:
    records = [
        formats.record_of(f"{1000 + i}-{i % 3}".encode(), {b"s": b"o", b"l": b"l" * (i % 50)})
        for i in range(count)
    ]
    path.write_bytes(b"".join(formats.encode_record(r) for r in records))
    return records


@given(count=st.integers(0, 120), tail=st.integers(0, 130), block=st.integers(1, 300))
def test_tail_of_an_archive_reads_backwards_across_block_edges(
    tmp_path_factory: pytest.TempPathFactory, count: int, tail: int, block: int
) -> None:
    path = tmp_path_factory.mktemp("tail") / "rank-0.log"
    records = _archive(path, count)
    assert formats.tail_records(path, tail, block=block) == (records[-tail:] if tail else [])


def test_archive_records_after_an_id_and_with_a_tail(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.log"
    records = _archive(path, 50)
    assert list(formats.archive_records(path)) == records
    assert list(formats.archive_records(path, after=records[19].id)) == records[20:]
    assert list(formats.archive_records(path, tail=5)) == records[-5:]
    assert list(formats.archive_records(path, after=records[47].id, tail=5)) == records[48:]
    assert list(formats.archive_records(path, after=records[-1].id)) == []
