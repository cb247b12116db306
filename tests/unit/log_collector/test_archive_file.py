"""Writing an archive file: all or nothing, and a redo after a crash neither loses nor repeats
a line (the new file is the old one plus what came after its last id)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from services.log_collector.archive import Pages, write_archive
from services.output import formats
from services.output.formats import Record


def _records(first: int, count: int) -> list[Record]:
    return [
        formats.record_of(f"{100 + i}-0".encode(), {b"s": b"o", b"l": b"line %d\xff" % i})
        for i in range(first, first + count)
    ]


def _pages(records: list[Record], size: int = 7) -> Pages:
    async def pages(after: str | None) -> AsyncIterator[list[Record]]:
        rest = [r for r in records if after is None or formats.id_key(r.id) > formats.id_key(after)]
        for start in range(0, len(rest), size):
            yield rest[start : start + size]

    return pages


async def test_an_archive_holds_every_record_in_order(tmp_path: Path) -> None:
    path = tmp_path / "run" / "0" / "rank-0.log"
    records = _records(0, 40)
    assert await write_archive(path, _pages(records)) == (40, records[-1].id)
    assert list(formats.archive_records(path)) == records
    assert [p.name for p in path.parent.iterdir()] == ["rank-0.log"]


async def test_a_redo_appends_only_what_came_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.log"
    first = _records(0, 30)
    await write_archive(path, _pages(first))
    # the crash came after the rename and before the stream was deleted; 10 lines came late
    everything = first + _records(30, 10)
    (tmp_path / "rank-0.log.999.tmp").write_bytes(b"half a file from a crash")
    assert await write_archive(path, _pages(everything)) == (40, everything[-1].id)
    assert list(formats.archive_records(path)) == everything
    assert [p.name for p in path.parent.glob("*")] == ["rank-0.log"]


async def test_an_attempt_without_lines_gets_an_empty_archive(tmp_path: Path) -> None:
    path = tmp_path / "rank-3.log"
    assert await write_archive(path, _pages([])) == (0, None)
    assert path.read_bytes() == b""
    assert formats.tail_records(path, 5) == []
