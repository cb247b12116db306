"""A scan of archive segments (``services.core.segments.scan``): only the rows its selection
takes, in log order whatever order the files are read in, each entry as the stream held it."""

from __future__ import annotations

from pathlib import Path

from events import codec
from services.core import segments
from services.core.archive import Archive, Entry


def entry(ms: int, seq: int, kind: bytes) -> Entry:
    flat = [codec.KIND, kind, codec.BODY, b"{}", codec.VERSION, str(seq + 1).encode()]
    return f"{ms}-{seq}", flat


def test_a_scan_takes_the_selected_kinds_and_times_in_log_order(tmp_path: Path) -> None:
    day = 86_400_000
    archive = Archive(tmp_path)
    first = [entry(10, 0, b"a@1"), entry(10, 1, b"b@1"), entry(20, 0, b"a@2")]
    second = [entry(day + 5, 0, b"a@1"), entry(day + 5, 1, b"c@1"), entry(day + 9, 0, b"a@1")]
    paths = [archive.write(first).path, archive.write(second).path]

    found = segments.scan(tmp_path, paths[::-1], segments.selection({b"a@1", b"a@2"}))
    assert found == [first[0], first[2], second[0], second[2]]  # the log's order, not the files'
    between = segments.scan(tmp_path, paths, segments.selection({b"a@1"}, 10, day + 9))
    assert between == [first[0], second[0]]
    assert segments.scan(tmp_path, [], segments.selection({b"a@1"})) == []
    assert segments.scan(tmp_path, paths, segments.selection(set())) == []
