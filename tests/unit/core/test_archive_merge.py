"""Merged segments (``Archive.merge``): whatever passes wrote and however they were merged,
a read gives the log as it was, a history read from its places gives its events, and each
place keeps its number."""

from __future__ import annotations

import itertools
import random
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import codec
from services.core import archive as archiving
from services.core import segments
from services.core.archive import Archive, Entry, Position, aggregate_of, day_of, parse
from tests.unit.projections.simulator import Simulator

DAY = 86_400_000


def a_log(seed: int, events: int) -> list[Entry]:
    """``events`` entries of simulated runs, 7 ms apart (two in some milliseconds), across a
    day's end, as the global log holds them."""
    found: list[Entry] = []
    versions: dict[str, int] = defaultdict(int)
    for n, record in enumerate(Simulator(random.Random(seed), runs=6).play(events)):
        event = record.event
        versions[event.aggregate] += 1
        fields = codec.encode(event)
        flat = [codec.KIND, fields[codec.KIND], codec.BODY, fields[codec.BODY]]
        flat += [codec.VERSION, str(versions[event.aggregate]).encode()]
        found.append((f"{DAY - 150 + 7 * (n // 2)}-{n % 2}", flat))
    return found[:events]


LOG = a_log(seed=3, events=90)
POSITIONS = [parse(position) for position, _ in LOG]


def write(archive: Archive, entries: list[Entry]) -> None:
    """One pass's segments: one a day."""
    for part in (
        [e for e in entries if parse(e[0])[0] < DAY],
        [e for e in entries if parse(e[0])[0] >= DAY],
    ):
        if part:
            archive.add(archive.write(part))


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, len(LOG) - 1), unique=True, max_size=14).map(sorted),
    merge_after=st.lists(st.booleans(), min_size=15, max_size=15),
    cap=st.integers(2, 60),
    group=st.integers(1, 9),
    budget=st.integers(1, 200),
    start=st.integers(0, len(LOG) - 1),
    count=st.integers(1, 40),
)
def test_merged_segments_read_as_the_log_and_keep_their_places(  # noqa: PLR0917
    cuts: list[int],
    merge_after: list[bool],
    cap: int,
    group: int,
    budget: int,
    start: int,
    count: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(archiving, "MERGED_EVENTS", cap)
        patch.setattr(segments, "GROUP_ROWS", group)  # a merged segment's rows, in groups
        archive = Archive(Path(tmp))
        places: dict[str, set[int]] = defaultdict(set)  # as the archiver records them
        bounds = [0, *cuts, len(LOG)]
        for n, (low, high) in enumerate(itertools.pairwise(bounds)):
            write(archive, LOG[low:high])
            for position, flat in LOG[low:high]:  # looked up at once, as ``retire_runs`` does
                places[aggregate_of(position, flat)] |= archive.places_of([parse(position)])
            if merge_after[n]:
                archive.merge(budget)
        listed = archive.manifest().segments
        assert sum(s.places for s in listed) == len(places_of_all(places))
        assert all(s.events <= cap or s.places == 1 for s in listed)
        for segment in listed:  # a segment holds one day's entries, in that day's folder
            days = {day_of(parse(segment.first)), day_of(parse(segment.last))}
            assert {segment.path.partition("/")[0]} == {f"day={day}" for day in days}

        fresh = Archive(Path(tmp))  # another process's reader
        begin: Position = POSITIONS[start]
        after = [e for e, p in zip(LOG, POSITIONS, strict=True) if p > begin][:count]
        assert fresh.read(begin, POSITIONS[-1], count) == after
        assert fresh.read((0, 0), POSITIONS[-1], len(LOG)) == LOG
        for aggregate, held in places.items():
            mine = [e for e in LOG if aggregate_of(*e) == aggregate]
            assert fresh.history(held, aggregate) == mine, aggregate
            # Places keep their numbers: one looked up now is the one recorded then.
            assert fresh.places_of(parse(e[0]) for e in mine) == held


def places_of_all(places: dict[str, set[int]]) -> set[int]:
    return set().union(*places.values())


def test_a_days_segments_merge_as_a_binary_counter(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    day = [e for e in LOG if parse(e[0])[0] < DAY]
    for n in range(7):
        archive.add(archive.write(day[n * 5 : n * 5 + 5]))
        archive.merge()
    assert [s.places for s in archive.manifest().segments] == [4, 2, 1]
    archive.add(archive.write(day[35:40]))
    assert archive.merge() == 3  # 1 + 1, 2 + 2, 4 + 4
    assert [s.places for s in archive.manifest().segments] == [8]
    archive.add(archive.write([e for e in LOG if parse(e[0])[0] >= DAY]))
    assert archive.merge() == 0  # another day's
    assert Archive(tmp_path).read((0, 0), POSITIONS[-1], len(LOG)) == day[:40] + [
        e for e in LOG if parse(e[0])[0] >= DAY
    ]


def test_a_pass_merges_so_much_at_most(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    for n in range(8):  # a former version's archive: never merged
        archive.add(archive.write(LOG[n * 4 : n * 4 + 4]))
    assert archive.merge(most=3) == 3  # the newest first: 1 + 1, 1 + 1, 2 + 2
    assert [s.places for s in archive.manifest().segments] == [1, 1, 1, 1, 4]
    assert archive.merge(budget=1) == 1  # one merge, whatever its size
    assert [s.places for s in archive.manifest().segments] == [1, 1, 2, 4]
    assert archive.merge() == 3
    assert [s.places for s in archive.manifest().segments] == [8]


def test_a_reader_whose_segment_was_merged_and_deleted_reads_the_manifest_again(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path)
    archive.add(archive.write(LOG[:10]))
    archive.add(archive.write(LOG[10:20]))
    reader = Archive(tmp_path)
    stale = reader.manifest()
    archive.merge()
    gone = archive.forget_unlisted()  # as the next pass does
    assert len(gone) == 2
    # The reader read the manifest just before the merge was listed (once: then it reads on).
    reads = iter([stale])
    real = reader._manifest.read
    reader._manifest.read = lambda: next(reads, None) or real()  # type: ignore[method-assign]
    assert reader.read((0, 0), POSITIONS[19], 100) == LOG[:20]
    reads = iter([stale])
    aggregate = aggregate_of(*LOG[15])
    mine = [e for e in LOG[:20] if aggregate_of(*e) == aggregate]
    assert reader.history({0, 1}, aggregate) == mine
