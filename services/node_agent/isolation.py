"""Who a rank runs as on the ``process`` executor, and the cgroup that holds its processes.

An agent running as root runs no rank as root, nor as itself: each run gets a uid of its own on
the node (``RUNPLANE_RANK_USERS=dynamic``, the default: a uid from ``RUNPLANE_RANK_UIDS``, as
systemd's DynamicUser does), or its owner's account where the node maps users
(``RUNPLANE_RANK_USERS=owner``: the owner's name looked up in the node's passwd). The run's
ranks on this node share the uid; no two runs on the node hold one at once. Such a rank cannot
read the agent's environment (``/proc/<pid>/environ`` needs the same uid), its files (its data
directory is 0700, everything it writes 0600: umask 077) or another run's, and cannot signal
what is not its own.

An agent that is not root cannot change uids: its ranks run as its own user and share its trust
(``Isolation.none``); the agent says so at start, in its registration, and ``mcli dev status``
shows it.

The uid leases and the homes are on disk (``Homes``); ``probe``, ``traversable``,
``runnable_by_ranks`` and ``end_processes_of`` act on the machine; choosing a uid is pure but
for the passwd lookups.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import signal
import time
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from services.core.procstat import ENDED, stat
from services.node_agent.errors import IsolationError
from services.node_agent.shim.cgroup import CgroupUnavailable, ranks_parent

__all__ = [
    "Homes",
    "Isolation",
    "RankUser",
    "end_processes_of",
    "parse_uid_range",
    "probe",
    "runnable_by_ranks",
    "traversable",
]

RankUsers = Literal["dynamic", "owner"]
DEFAULT_UIDS = "61184-65519"  # systemd's range for dynamic users
_KILL_ROUNDS = 50
_KILL_PAUSE_S = 0.01


class RankUser(NamedTuple):
    uid: int
    gid: int


def parse_uid_range(text: str) -> range:
    """``FIRST-LAST`` (inclusive) as a range; ValueError naming what is wrong."""
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"a uid range is FIRST-LAST, like {DEFAULT_UIDS}: not {text!r}")
    low, high = int(first), int(last)
    if not 0 < low <= high < 2**31:
        raise ValueError(f"uid range {text!r}: need 0 < FIRST <= LAST < 2^31 (root is not one)")
    return range(low, high + 1)


class Isolation(NamedTuple):
    """How this agent's ranks are kept apart from it and from each other."""

    #: Ranks run as uids of their own (the agent is root); False: as the agent's user.
    users: bool
    mode: RankUsers
    uids: range
    #: Where the ranks' cgroups go; None: none can be made (``cgroup_problem`` says why).
    cgroup_parent: Path | None
    cgroup_problem: str | None
    why_not: str | None  # why ranks share the agent's user, when they do

    @classmethod
    def none(cls, why: str) -> Isolation:
        return cls(False, "dynamic", range(0), None, None, why)

    def describe(self) -> str:
        """One line for the agent's start, its registration and ``mcli dev status``."""
        if not self.users:
            users = f"none ({self.why_not}): runs share the agent's user and its trust"
        elif self.mode == "owner":
            users = "each run as its owner's uid"
        else:
            users = f"each run as its own uid ({self.uids.start}-{self.uids.stop - 1})"
        cgroups = (
            "a cgroup per rank"
            if self.cgroup_parent is not None
            else f"no cgroups ({self.cgroup_problem}): each rank's shim is its subreaper"
        )
        return f"{users}; {cgroups}"

    def user_for(self, run_id: str, owner: str, taken: Collection[int]) -> RankUser:
        """The uid a new run's ranks get on this node; ``taken``: the uids of the other runs
        with ranks here. ``IsolationError`` when there is none to give."""
        if self.mode == "owner":
            return owner_user(owner)
        size = len(self.uids)
        start = zlib.crc32(run_id.encode()) % size
        for step in range(size):
            uid = self.uids[(start + step) % size]
            if uid not in taken and not _known(uid):
                return RankUser(uid, uid)
        raise IsolationError(
            f"every uid of {self.uids.start}-{self.uids.stop - 1} is taken on this node: "
            "widen RUNPLANE_RANK_UIDS"
        )


def owner_user(owner: str) -> RankUser:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise IsolationError(
            f"the node has no account named {owner!r} (RUNPLANE_RANK_USERS=owner): ask your "
            "platform team to add it"
        ) from None
    if entry.pw_uid == 0:
        raise IsolationError(f"{owner!r} is root on this node: no rank runs as root")
    return RankUser(entry.pw_uid, entry.pw_gid)


def _known(uid: int) -> bool:
    """A uid that belongs to an account of the node is never handed out."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def probe(
    mode: RankUsers, uids: range, cgroup_parent: Path | None, *, euid: int | None = None
) -> Isolation:
    """What this machine allows this agent."""
    euid = os.geteuid() if euid is None else euid
    try:
        parent: Path | None = ranks_parent(cgroup_parent)
        problem = None
    except CgroupUnavailable as exc:
        parent, problem = None, str(exc)
    if euid != 0:
        return Isolation(False, mode, uids, parent, problem, "not root")
    return Isolation(True, mode, uids, parent, problem, None)


def traversable(path: Path) -> str | None:
    """Create ``path`` (and what is missing above it) as root's 0711 directories; why a rank
    could not reach a home under it, or None."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        created.chmod(0o711)  # not the umask's
    if path.stat().st_uid == os.geteuid():
        path.chmod(0o711)  # ours: ranks pass through, and list nothing
    for parent in (path, *path.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            return (
                f"{parent} is mode {mode & 0o777:o}: a rank running as its own uid cannot "
                f"reach its home under {path} (chmod o+x {parent}, or set RUNPLANE_RANKS_DIR)"
            )
    return None


def runnable_by_ranks(program: str) -> str | None:
    """Why a rank running as a uid of its own could not run ``program`` (the agent's Python, a
    tool), or None: every directory on the way to it (links resolved) must let others pass,
    the file must let others execute it."""
    path = Path(os.path.realpath(program))
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & 0o001:
            return f"{program} is under {parent}, mode {parent.stat().st_mode & 0o777:o}"
    if not path.stat().st_mode & 0o001:
        return f"{program} is mode {path.stat().st_mode & 0o777:o}"
    return None


def end_processes_of(uid: int) -> int:
    """SIGKILL every process running as ``uid`` (a dynamic uid: only a run's processes ever
    do), until none is left or a bound passes; how many were signalled. Never for uid 0.
    A look costs one ``stat`` per process of the machine (its owner), and a read of ``stat``
    only for the few that ``uid`` owns: it runs under the homes' lock, which every agent of
    the machine takes for each new run."""
    if uid == 0:
        raise ValueError("not a rank's uid: 0")
    killed = 0
    for _ in range(_KILL_ROUNDS):
        found = [pid for pid in _pids() if _owned_by(pid, uid)]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(_KILL_PAUSE_S)  # allowed: the kernel reaps what was killed
    return killed


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _owned_by(pid: int, uid: int) -> bool:
    """Whether the process runs as ``uid`` (its effective uid) and has not ended (a zombie
    has nothing left to kill)."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            return False
    except FileNotFoundError:
        return False
    fields = stat(pid)
    return fields is not None and fields[0] not in ENDED


class Homes:
    """The ranks' homes under ``root`` (``<root>/<run_id>/<attempt>/<rank>``) and, for dynamic
    uids, which run holds which uid on this machine: ``<root>/.uids/<uid>`` holds the run's id
    for as long as the run has a directory under ``root``. Every agent of the machine that
    shares ``root`` shares the leases, so no two runs on the machine hold one uid, whichever
    agent placed them. Both change under one lock (``flock`` on ``.uids/.lock``): "the run's
    directory exists" and "the run holds its uid" are one fact."""

    def __init__(self, root: Path, isolation: Isolation | None = None) -> None:
        self.root = root
        self.isolation = isolation or Isolation.none("only closing homes")
        self.leases = root / ".uids"

    def home(self, run_id: str, attempt: int, rank: int) -> Path:
        return self.root / run_id / str(attempt) / str(rank)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.leases.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.leases / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def held(self) -> dict[int, str]:
        """uid -> the run that holds it."""
        found = {}
        for entry in self.leases.glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                found[int(entry.name)] = entry.read_text()
        return found

    def open(self, home: Path, run_id: str, owner: str) -> RankUser | None:
        """Whom the rank at ``home`` runs as (None: the agent's user); ``home`` is created,
        root's, 0700 and empty, before the lock is let go. ``IsolationError``: no user."""
        with self._locked():
            user = self._user(run_id, owner)
            for parent in (home.parent.parent, home.parent):
                with contextlib.suppress(FileExistsError):
                    parent.mkdir()
                    parent.chmod(0o711)  # a rank reaches its home through them, lists nothing
            home.mkdir(mode=0o700, exist_ok=True)
            return user

    def _user(self, run_id: str, owner: str) -> RankUser | None:
        if not self.isolation.users:
            return None
        if self.isolation.mode == "owner":
            return owner_user(owner)
        held = self.held()
        for uid, holder in held.items():
            if holder == run_id:
                return RankUser(uid, uid)
        user = self.isolation.user_for(run_id, owner, set(held))
        end_processes_of(user.uid)  # nothing of a run that held it before may meet this one
        (self.leases / str(user.uid)).write_text(run_id)
        return user

    def close(self, home: Path, run_id: str) -> None:
        """After ``home`` is removed: its attempt's and run's directories once empty; with the
        run's directory goes its uid's lease."""
        with self._locked():
            for parent in (home.parent, home.parent.parent):
                try:
                    parent.rmdir()
                except FileNotFoundError:
                    continue
                except OSError:
                    return  # another rank of the run still has its home here
            for uid, holder in self.held().items():
                if holder == run_id:
                    end_processes_of(uid)  # what escaped its cgroup, or had none to be in
                    (self.leases / str(uid)).unlink(missing_ok=True)
