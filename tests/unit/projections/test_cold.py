"""The cold rows' segments on disk (``projections.cold``): each run's rows in a build come from
the latest segment holding it there; a segment's Bloom filter never hides a run it holds."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from projections import cold
from projections.base import Row
from services.core import segments
from services.projector import cooling
from services.projector.cooling import _write


def _row(kind: str, row_id: str, body: str, *index: tuple[str, int]) -> Row:
    return Row(kind=kind, id=row_id, body=body.encode(), index=index)


def test_each_run_comes_from_the_latest_segment_holding_it_in_the_build(tmp_path: Path) -> None:
    first = _row("run", "r1", '"first"', ("created", 5), ("user:a", 5))
    _write(
        tmp_path,
        [
            ("run_status", "v3", "r1", first),
            ("run_status", "v3", "r1", _row("name", "hello-1", '"r1"')),
            ("attempts", "v7", "r1", _row("attempt", "r1:0", '"a0"', ("run:r1", 0))),
            ("run_status", "v3", "r2", _row("run", "r2", '"two"', ("created", 9))),
        ],
    )
    again = _row("run", "r1", '"again"', ("created", 5))
    _write(tmp_path, [("run_status", "v3", "r1", again)])  # it came back, rested again
    rows = cold.ColdRows(tmp_path)

    assert rows.runs("run_status", "v3", ["r1", "r2", "r3"]) == {
        "r1": [again],
        "r2": [_row("run", "r2", '"two"', ("created", 9))],
    }
    # The latest segment holds r1 in run_status only: its attempts are the first segment's.
    assert rows.runs("attempts", "v7", ["r1"]) == {
        "r1": [_row("attempt", "r1:0", '"a0"', ("run:r1", 0))]
    }
    assert rows.runs("run_status", "v4", ["r1"]) == {}  # another build: none
    assert rows.named("v3", "hello-1") == "r1"
    assert rows.named("v3", "nobody") is None
    assert rows.created("v3", float("-inf"), float("inf")) == [(9, "r2"), (5, "r1")]
    assert rows.created("v3", 6, float("inf")) == [(9, "r2")]
    listed = cold.manifest(tmp_path).segments
    assert [(s.runs, s.rows) for s in listed] == [(2, 4), (1, 1)]
    assert all(s.bloom for s in listed)


def test_a_segment_the_manifest_does_not_list_is_never_read(tmp_path: Path) -> None:
    _write(tmp_path, [("run_status", "v3", "r1", _row("run", "r1", '"one"'))])
    stray = cold.table([("run_status", "v3", "r9", _row("run", "r9", '"stray"'))])
    segments.write(stray, str(tmp_path / "99999999-stray.parquet"))
    assert cold.ColdRows(tmp_path).runs("run_status", "v3", ["r9"]) == {}
    _write(tmp_path, [("run_status", "v3", "r2", _row("run", "r2", '"two"'))])
    assert not (tmp_path / "99999999-stray.parquet").exists()  # the next pass deletes it
    assert msgspec.json.decode((tmp_path / cold.MANIFEST).read_bytes())["segments"]


def test_a_listing_reads_the_newest_segments_first_and_skips_stale_copies(
    tmp_path: Path,
) -> None:
    """``created`` with ``want`` gives the newest runs as the whole listing does, a run that
    came back and was cooled again only as its latest copy says."""
    rng = random.Random(9)
    made = 0
    for _ in range(12):  # passes: each cools the next oldest runs, a few earlier ones again
        placed = []
        for _ in range(rng.randint(1, 6)):
            made += 1
            run = f"r{made}"
            placed.append(("run_status", "v3", run, _row("run", run, '"x"', ("created", made))))
        if made > 10 and rng.random() < 0.5:
            again = f"r{rng.randint(1, made - 8)}"  # it came back and rested again
            placed.append(("run_status", "v3", again, _row("run", again, '"y"', ("created", 0))))
        _write(tmp_path, placed)
    rows = cold.ColdRows(tmp_path)
    whole = rows.created("v3", float("-inf"), float("inf"))
    assert len({run for _, run in whole}) == len(whole) == made  # one copy of each
    for want in (1, 3, 10, made):
        assert rows.created("v3", float("-inf"), float("inf"), want)[:want] == whole[:want]
    bounded = rows.created("v3", 5, 20)
    assert bounded == [(c, r) for c, r in whole if 5 <= c <= 20]
    assert rows.created("v3", 5, 20, 4)[:4] == bounded[:4]


def test_cold_rows_this_host_cannot_read_are_refused_not_missed(tmp_path: Path) -> None:
    """A reader sent to a directory it cannot read says so: its runs would be missing."""
    rows = cold.ColdRows(tmp_path / "not-mounted")
    with pytest.raises(cold.ColdRowsMissing, match="mount the event archive at that path"):
        rows.runs("run_status", "v3", ["r1"])


def test_segments_merge_as_they_come_and_keep_each_runs_latest_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cooling, "MERGED_RUNS", 8)
    latest: dict[str, bytes] = {}
    for n in range(40):
        run = f"r{n % 5}"  # runs come back and are cooled again
        row = _row("run", run, f'"{n}"', ("created", n % 5))
        _write(tmp_path, [("run_status", "v3", run, row), ("billing", "v3", run, row)])
        latest[run] = row.body or b""
    listed = cold.manifest(tmp_path).segments
    assert len(listed) < 10  # a segment per pass, else
    assert all(s.runs <= 8 for s in listed)
    assert sum(s.rows for s in listed) < 80  # stale copies merged away
    for projection in ("run_status", "billing"):
        found = cold.ColdRows(tmp_path).runs(projection, "v3", list(latest))
        assert {run: rows[0].body for run, rows in found.items()} == latest
    on_disk = sorted(p.name for p in tmp_path.glob("*.parquet"))
    assert on_disk == sorted(s.path for s in listed)
    whole = cold.ColdRows(tmp_path).created("v3", float("-inf"), float("inf"))
    assert sorted(run for _, run in whole) == sorted(latest)
