"""Whom a rank runs as: uid ranges, a uid per run on a machine, homes and their leases."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.node_agent.errors import IsolationError
from services.node_agent.isolation import (
    Homes,
    Isolation,
    end_processes_of,
    parse_uid_range,
    runnable_by_ranks,
    traversable,
)
from services.node_agent.shim.cgroup import _cgroup2_mount
from tests.ranks import open_to_ranks

UIDS = range(70_000, 70_004)  # no account of any machine has these


def isolated(uids: range = UIDS) -> Isolation:
    return Isolation(True, "dynamic", uids, None, "none here", None)


def test_a_uid_range_is_first_to_last_and_never_root() -> None:
    assert parse_uid_range("61184-65519") == range(61184, 65520)
    for bad in ("", "5", "5-", "-5", "0-10", "10-5", "a-b"):
        with pytest.raises(ValueError, match=r"uid range|FIRST-LAST"):
            parse_uid_range(bad)


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4, unique=True))
def test_runs_on_one_machine_never_share_a_uid(runs: list[str]) -> None:
    taken: set[int] = set()
    for run in runs:
        user = isolated().user_for(run, "alice", taken)
        assert user.uid in UIDS
        assert user.uid not in taken
        assert user.gid == user.uid
        taken.add(user.uid)


def test_a_full_range_is_refused_with_what_to_do() -> None:
    with pytest.raises(IsolationError, match="widen RUNPLANE_RANK_UIDS"):
        isolated().user_for("run", "alice", set(UIDS))


def test_an_account_of_the_node_is_never_handed_out() -> None:
    root_range = range(0, 1)  # uid 0 is root's account
    with pytest.raises(IsolationError):
        Isolation(True, "dynamic", root_range, None, None, None).user_for("r", "a", set())


def test_owner_mode_maps_the_owner_by_name_and_refuses_root_and_strangers() -> None:
    owner = Isolation(True, "owner", UIDS, None, None, None)
    with pytest.raises(IsolationError, match="no account named"):
        owner.user_for("run", "no-such-user-here", set())
    with pytest.raises(IsolationError, match="no rank runs as root"):
        owner.user_for("run", "root", set())


def test_not_root_says_so() -> None:
    shared = Isolation.none("not root")
    assert shared.describe().startswith("none (not root): runs share the agent's user")
    assert "a uid" not in shared.describe()


def test_homes_lease_a_uid_per_run_and_give_it_back_with_the_runs_last_home(
    tmp_path: Path,
) -> None:
    homes = Homes(tmp_path / "homes", isolated())
    first = homes.home("run-a", 0, 0)
    second = homes.home("run-a", 0, 1)
    other = homes.home("run-b", 0, 0)
    a = homes.open(first, "run-a", "alice")
    assert homes.open(second, "run-a", "alice") == a  # the run's ranks share it
    b = homes.open(other, "run-b", "bob")
    assert a is not None
    assert b is not None
    assert a != b
    assert homes.held() == {a.uid: "run-a", b.uid: "run-b"}
    assert first.is_dir()
    assert oct(first.stat().st_mode & 0o777) == "0o700"
    assert oct(first.parent.stat().st_mode & 0o777) == "0o711"  # passed through, not listed

    first.rmdir()
    homes.close(first, "run-a")
    assert a.uid in homes.held()  # rank 1 still has its home
    second.rmdir()
    homes.close(second, "run-a")
    assert homes.held() == {b.uid: "run-b"}
    assert not (tmp_path / "homes" / "run-a").exists()


def test_without_isolation_a_home_is_the_agents_users(tmp_path: Path) -> None:
    homes = Homes(tmp_path / "homes", Isolation.none("not root"))
    home = homes.home("run", 0, 0)
    assert homes.open(home, "run", "alice") is None
    assert home.is_dir()
    assert homes.held() == {}


def test_what_ranks_cannot_reach_is_named(tmp_path: Path) -> None:
    open_to_ranks(tmp_path)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    tool = closed / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert runnable_by_ranks(str(tool)) == f"{tool} is under {closed}, mode 700"
    closed.chmod(0o711)
    assert runnable_by_ranks(str(tool)) is None
    tool.chmod(0o700)
    assert runnable_by_ranks(str(tool)) == f"{tool} is mode 700"
    assert traversable(closed / "a" / "b") is None
    assert oct((closed / "a").stat().st_mode & 0o777) == "0o711"


def test_the_cgroup2_mount_is_found_in_mountinfo() -> None:
    hybrid = (
        "35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "40 25 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert _cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    assert _cgroup2_mount("35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process as another uid needs root")
def test_every_process_of_a_uid_is_ended_and_no_other() -> None:
    uid = 70_003
    started = [
        subprocess.Popen(["sleep", "600"], user=uid, group=uid, start_new_session=True)
        for _ in range(2)
    ]
    mine = subprocess.Popen(["sleep", "600"])
    try:
        assert end_processes_of(uid) == 2
        assert [proc.wait(timeout=10) for proc in started] == [-9, -9]
        assert mine.poll() is None
        assert end_processes_of(uid) == 0
    finally:
        mine.kill()
        mine.wait()
    with pytest.raises(ValueError, match="not a rank's uid"):
        end_processes_of(0)
