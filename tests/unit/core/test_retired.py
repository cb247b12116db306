"""The archive's index of retired histories (``services.core.retired``): a history's newest
record is what a lookup finds, whatever the merges did, in a file per power of two at most."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core import segments
from services.core.retired import INDEX, Retired, RetiredIndex

_RUNS = [f"run:{n:04x}" for n in range(40)]
_record = st.builds(
    Retired,
    st.integers(1, 50),
    st.lists(st.integers(0, 30), max_size=4).map(lambda s: tuple(sorted(set(s)))),
)
_batches = st.lists(st.dictionaries(st.sampled_from(_RUNS), _record, max_size=12), max_size=25)


@settings(max_examples=40, deadline=None)
@given(_batches)
def test_each_history_reads_as_its_newest_record(batches: list[dict[str, Retired]]) -> None:
    import tempfile  # noqa: PLC0415 - a directory a draw, which a fixture would share

    with tempfile.TemporaryDirectory() as directory:
        index, model = RetiredIndex(Path(directory)), dict[str, Retired]()
        for batch in batches:
            index.add(batch)
            model |= batch
            listed = index.manifest().files
            held = sum(f.histories for f in listed)
            # Merged files hold an aggregate once: a file per power of two of the histories.
            assert len(listed) <= max(1, math.floor(math.log2(max(held, 1))) + 1) + 1
            sizes = [f.histories for f in listed]
            assert sizes == sorted(sizes, reverse=True) or len(sizes) <= 2
        # A fresh reader: nothing kept in memory.
        fresh = RetiredIndex(Path(directory))
        assert {run: fresh.find(run) for run in _RUNS} == {run: model.get(run) for run in _RUNS}
        on_disk = {p.name for p in (Path(directory) / INDEX).glob("*.parquet")}
        assert on_disk == {Path(f.path).name for f in fresh.manifest().files}


def test_files_merge_as_a_binary_counter(tmp_path: Path) -> None:
    index = RetiredIndex(tmp_path)
    for n in range(16):
        index.add({f"run:{n}": Retired(1, (n,))})
    assert [f.histories for f in index.manifest().files] == [16]
    index.add({"run:16": Retired(1, (16,))})
    index.add({"run:17": Retired(1, (17,))})
    index.add({"run:18": Retired(1, (18,))})
    assert [f.histories for f in index.manifest().files] == [16, 2, 1]
    assert index.find("run:3") == Retired(1, (3,))
    assert index.find("run:99") is None


def test_a_file_the_manifest_does_not_list_is_never_read_and_goes(tmp_path: Path) -> None:
    index = RetiredIndex(tmp_path)
    index.add({"run:a": Retired(3, (0,))})
    listed = index.manifest().files[0]
    # A crash after a file was written and before the manifest listed it: a later record.
    stray = tmp_path / INDEX / "00000009-deadbeef.parquet"
    stray.write_bytes((tmp_path / listed.path).read_bytes().replace(b"3 0", b"9 9"))
    assert index.find("run:a") == Retired(3, (0,))
    assert index.forget_unlisted() == [stray]
    assert not stray.exists()


def test_a_lookup_opens_only_the_files_that_may_hold_the_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = RetiredIndex(tmp_path)
    index.add({f"run:{n}": Retired(1, (0,)) for n in range(100)})
    index.add({f"run:x{n}": Retired(2, (1,)) for n in range(10)})
    opened: list[Path] = []
    find = segments.find_in_index

    def counted(path: Path, aggregate: str) -> str | None:
        opened.append(path)
        return find(path, aggregate)

    monkeypatch.setattr(segments, "find_in_index", counted)
    assert index.find("run:x3") == Retired(2, (1,))
    assert opened == [tmp_path / index.manifest().files[1].path]  # the newest, and only it
    opened.clear()
    assert all(index.find(f"run:y{n}") is None for n in range(200))
    assert len(opened) < 12  # about 1 % a file: 4 expected of 400 filters asked
