"""What a rank leaves on disk: atomic files, a lock that says whether its shim lives."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from services.node_agent.isolation import RankUser
from services.node_agent.job import ExitStatus, RankKey
from services.node_agent.process.rankdir import RankDir, local_ranks
from services.node_agent.shim.ondisk import atomic_write

KEY = RankKey("run1", 2, 1)


def test_a_rank_dir_is_found_until_it_is_done(tmp_path: Path) -> None:
    rank_dir = RankDir.of(tmp_path, KEY)
    rank_dir.create(KEY)
    rank_dir.new_home()
    assert rank_dir.root == tmp_path / "ranks" / "run1" / "2" / "1"
    assert rank_dir.home == tmp_path / "homes" / "run1" / "2" / "1"
    assert rank_dir.workspace.is_dir()
    assert [found.key for found in local_ranks(tmp_path)] == [KEY]
    rank_dir.mark_done()
    rank_dir.free()
    assert local_ranks(tmp_path) == []
    assert not rank_dir.home.exists()  # the disk is freed, the small records stay
    assert rank_dir.record().key == KEY
    assert RankDir(rank_dir.root).home == rank_dir.home  # a restarted agent finds it again


def test_a_damaged_file_reads_as_missing_and_the_key_comes_from_the_path(
    tmp_path: Path,
) -> None:
    rank_dir = RankDir.of(tmp_path, KEY)
    rank_dir.create(KEY)
    rank_dir.record_file.write_bytes(b"")  # what a power loss can leave
    rank_dir.exit_file.write_bytes(b'{"exit_co')
    assert rank_dir.record().key == KEY
    assert rank_dir.exit_status() is None
    assert [found.key for found in local_ranks(tmp_path)] == [KEY]


def test_setup_begins_again_in_a_new_home_and_counts(tmp_path: Path) -> None:
    rank_dir = RankDir.of(tmp_path, KEY)
    rank_dir.create(KEY)
    rank_dir.new_home()
    (rank_dir.workspace / "half-cloned").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (rank_dir.home / "planted").symlink_to(outside)  # what a rank could leave
    assert rank_dir.begin_setup_again() == 2
    rank_dir.new_home()
    assert [p.name for p in rank_dir.home.iterdir()] == ["workspace"]
    assert list(rank_dir.workspace.iterdir()) == []
    assert (outside / "keep").exists()  # the link was removed, not followed
    assert rank_dir.begin_setup_again() == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a home to another uid needs root")
def test_a_home_is_given_to_the_rank_user_whole(tmp_path: Path) -> None:
    rank_dir = RankDir.of(tmp_path, KEY)
    rank_dir.create(KEY)
    rank_dir.new_home()
    rank_dir.secrets_dir.mkdir()
    (rank_dir.secrets_dir / "key").write_text("x")
    rank_dir.give(RankUser(61999, 61999))
    owners = {p.stat().st_uid for p in (rank_dir.home, *rank_dir.home.rglob("*"))}
    assert owners == {61999}
    assert rank_dir.record_file.stat().st_uid == 0  # the agent's files stay the agent's


def test_the_lock_says_whether_the_shim_lives(tmp_path: Path) -> None:
    rank_dir = RankDir.of(tmp_path, KEY)
    rank_dir.create(KEY)
    assert not rank_dir.launched()
    assert not rank_dir.shim_alive()
    holder = os.open(rank_dir.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # what the shim holds for its whole life
    assert rank_dir.launched()
    assert rank_dir.shim_alive()
    os.close(holder)  # the shim's end, whatever ended it
    assert not rank_dir.shim_alive()


def test_exit_status_round_trip(tmp_path: Path) -> None:
    rank_dir = RankDir.of(tmp_path, KEY)
    rank_dir.create(KEY)
    assert rank_dir.exit_status() is None
    rank_dir.write_exit(ExitStatus(exit_code=None, signal=9, stopped=True, lines=3))
    assert rank_dir.exit_status() == ExitStatus(signal=9, stopped=True, lines=3)


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "exit.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["exit.json"]


@pytest.mark.parametrize("run_id", ["", "..", "a/b"])
def test_a_run_id_cannot_escape_the_data_dir(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ValueError, match="not a run id"):
        RankDir.of(tmp_path, RankKey(run_id, 0, 0))
