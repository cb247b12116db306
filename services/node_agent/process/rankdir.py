"""The state a rank leaves on the node's disk: what survives a kill -9 of the node-agent.

``<data_dir>/ranks/<run_id>/<attempt>/<rank>/`` holds:

- ``rank.json``: which rank this is; written before any event of the rank is reported, so a
  restarted agent knows every rank it ever began.
- ``shim.json``: what the shim runs (command, cwd, environment, where output goes).
- ``shim.lock``: created just before the shim is launched; the shim holds an exclusive
  ``flock`` on it for its whole life (inherited at fork, so from its first instant). Locked
  means the shim is alive; the lock dies with the process, whatever kills it, and a reused
  pid cannot fake it.
- ``setup.pid``: the process group of the setup tool running now (git, pip), so a restarted
  agent can end what an interrupted setup left behind.
- ``shim.pid`` (written by the shim once its signal handlers are in place: only then may it
  be signalled), ``command.pid`` (the command's pid, which is also its process group).
- ``exit.json``: how the command ended, written atomically by the shim once its output is sent.
- ``done``: the exit was reported (or the log had moved on); nothing more to do here.

What belongs to the rank itself is in its *home*, ``<homes>/<run_id>/<attempt>/<rank>/``
(``homes``: ``RUNPLANE_RANKS_DIR``; the rank's ``HOME``), owned by the rank's user
(``isolation``) with mode 0700, so that another run's ranks cannot read it:

- ``token``: the rank's run token (0600; ``services.node_agent.runtoken``), removed when the rank
  is done.
- ``secrets/``: the run owner's secret files (0600, directories 0700), each at its mount path
  under it (``/secrets/db/secret`` is ``secrets/secrets/db/secret``;
  ``services.node_agent.secrets``), removed when the rank is done.
- ``workspace/`` (the command's cwd, with ``parameters.yaml``) and ``venv/`` (when an
  integration needed one).

The agent writes everything in a home (token, secrets, parameters) while only root's processes
can reach it, *then* gives the tree to the rank's user: the agent never writes where a rank's
process could have put a symbolic link. A setup that begins again starts from a new home.
The whole home goes when the rank is done.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import msgspec

from services.node_agent.isolation import Homes, RankUser
from services.node_agent.job import ExitStatus, RankKey
from services.node_agent.shim import ondisk
from services.node_agent.shim.cgroup import Cgroup
from services.node_agent.shim.ondisk import atomic_write, kill_group, read_pid

RANKS = "ranks"
HOMES = "homes"  # the ranks' homes in the data directory, when no other place is set


class ShimSpec(msgspec.Struct, kw_only=True, frozen=True):
    run_id: str
    attempt: int
    rank: int
    command: str
    cwd: str
    env: dict[str, str]
    redis_url: str
    #: Who the command runs as, and the cgroup it joins before it execs (``isolation``).
    uid: int | None = None
    gid: int | None = None
    cgroup: str | None = None
    #: The agent's login, the password as its file's name (the spec is on disk, and read by
    #: the shim only when it connects): never the password itself.
    redis_username: str | None = None
    redis_password_file: str | None = None
    #: Replicas that must hold an output line before it counts as sent, and how long one
    #: wait for them lasts (``RUNPLANE_APPEND_REPLICAS``).
    replicas: int = 0
    replica_timeout_ms: int = 2000
    grace_period_s: float
    #: The node's lease and the fence (``shim.lease``, docs/fencing.md); None: no fencing.
    lease_file: str | None = None
    fence_timeout_s: float | None = None
    fence_grace_s: float | None = None
    fence_poll_s: float | None = None
    max_lines: int = 50_000  # lines in flight before lines are dropped (and counted)
    max_line: int = 64 * 1024  # bytes kept of one line


class RankRecord(msgspec.Struct, kw_only=True):
    run_id: str
    attempt: int
    rank: int
    setup_tries: int = 1
    #: The rank's own files (``home``); None in records written before homes existed.
    home: str | None = None
    #: Who the rank's processes run as (``isolation``); None: as the agent's user.
    uid: int | None = None
    gid: int | None = None
    #: The rank's cgroup (``shim.cgroup``); None: none could be made.
    cgroup: str | None = None

    @property
    def user(self) -> RankUser | None:
        return None if self.uid is None or self.gid is None else RankUser(self.uid, self.gid)

    @property
    def key(self) -> RankKey:
        return RankKey(self.run_id, self.attempt, self.rank)


class RankDir:
    def __init__(self, root: Path, home: Path | None = None) -> None:
        self.root = root
        self.record_file = root / ondisk.RECORD
        self.spec_file = root / ondisk.SPEC
        self.lock_file = root / ondisk.LOCK
        self.shim_pid_file = root / ondisk.SHIM_PID
        self.command_pid_file = root / ondisk.COMMAND_PID
        self.exit_file = root / ondisk.EXIT
        self.shim_log = root / ondisk.SHIM_LOG
        self.setup_pid_file = root / ondisk.SETUP_PID
        self.done_file = root / ondisk.DONE
        if home is None:
            recorded = self.record().home
            home = root if recorded is None else Path(recorded)  # None: the layout before homes
        self.home = home
        self.token_file = home / "token"
        self.secrets_dir = home / "secrets"
        self.workspace = home / "workspace"
        self.venv = home / "venv"

    @classmethod
    def of(cls, data_dir: Path, key: RankKey, homes: Path | None = None) -> RankDir:
        """Rank ``key``'s directory; its home under ``homes`` (default ``<data_dir>/homes``)
        for a new rank, where its record says for one begun before."""
        if "/" in key.run_id or key.run_id in ("", ".", ".."):
            raise ValueError(f"not a run id: {key.run_id!r}")
        root = data_dir / RANKS / key.run_id / str(key.attempt) / str(key.rank)
        if (root / ondisk.RECORD).exists():
            return cls(root)
        homes = data_dir / HOMES if homes is None else homes
        return cls(root, homes / key.run_id / str(key.attempt) / str(key.rank))

    # --- the record ------------------------------------------------------------------

    def create(self, key: RankKey) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        record = RankRecord(
            run_id=key.run_id, attempt=key.attempt, rank=key.rank, home=str(self.home)
        )
        atomic_write(self.record_file, msgspec.json.encode(record))

    def update(self, **fields: object) -> RankRecord:
        """The record with ``fields`` changed, written whole."""
        record = msgspec.structs.replace(self.record(), **fields)
        atomic_write(self.record_file, msgspec.json.encode(record))
        return record

    # --- the home --------------------------------------------------------------------

    def new_home(self) -> None:
        """An empty home with its workspace, root's and 0700 until ``give``: whatever an
        earlier setup left in it is gone, and no process of the rank can reach it yet."""
        if self.home.exists():
            os.chmod(self.home, 0o700)
            os.chown(self.home, os.geteuid(), os.getegid())  # back from an earlier setup's user
            for entry in os.scandir(self.home):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)  # never follows a link in the tree
                else:
                    os.unlink(entry.path)
        else:
            self.home.mkdir(mode=0o700, parents=True)
        self.workspace.mkdir(mode=0o700)

    def give(self, user: RankUser | None) -> None:
        """The home to the rank's user (nothing to do when the rank runs as the agent's)."""
        if user is None:
            return
        for top, dirs, files in os.walk(self.home):
            for name in (*dirs, *files):
                os.lchown(os.path.join(top, name), user.uid, user.gid)
        os.lchown(self.home, user.uid, user.gid)

    @property
    def key(self) -> RankKey:
        """Which rank this is, from the path (it holds even when a file is damaged)."""
        attempt, rank = self.root.parent, self.root
        return RankKey(attempt.parent.name, int(attempt.name), int(rank.name))

    def record(self) -> RankRecord:
        try:
            return msgspec.json.decode(self.record_file.read_bytes(), type=RankRecord)
        except (OSError, msgspec.DecodeError):
            key = self.key  # a file a power loss emptied: what the path says, first try
            return RankRecord(run_id=key.run_id, attempt=key.attempt, rank=key.rank)

    def begin_setup_again(self) -> int:
        """Wipe what an interrupted setup left; the number of setups begun, this one included."""
        record = self.update(setup_tries=self.record().setup_tries + 1)
        kill_group(read_pid(self.setup_pid_file))  # a tool the interrupted setup left running
        if record.cgroup is not None:
            Cgroup(record.cgroup).kill()  # and whatever that tool started
        return record.setup_tries

    # --- the shim --------------------------------------------------------------------

    def write_spec(self, spec: ShimSpec) -> None:
        atomic_write(self.spec_file, msgspec.json.encode(spec), mode=0o600)

    def launched(self) -> bool:
        return self.lock_file.exists()

    def shim_alive(self) -> bool:
        try:
            fd = os.open(self.lock_file, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing the descriptor also releases a lock taken just now
        return False

    def shim_pid(self) -> int | None:
        return read_pid(self.shim_pid_file)

    def command_pid(self) -> int | None:
        return read_pid(self.command_pid_file)

    def exit_status(self) -> ExitStatus | None:
        try:
            return msgspec.json.decode(self.exit_file.read_bytes(), type=ExitStatus)
        except (OSError, msgspec.DecodeError):
            return None  # not written, or damaged by a power loss: how it ended is unknown

    def write_exit(self, status: ExitStatus) -> None:
        atomic_write(self.exit_file, msgspec.json.encode(status))

    # --- the end ---------------------------------------------------------------------

    def is_done(self) -> bool:
        return self.done_file.exists()

    def mark_done(self) -> None:
        """Nothing more to do for this rank (its small state files stay, for a post-mortem;
        what is left of its processes is killed; its token and its secrets go: they are
        nobody's business now)."""
        if (cgroup := self.record().cgroup) is not None:
            Cgroup(cgroup).remove()
        self.token_file.unlink(missing_ok=True)
        shutil.rmtree(self.secrets_dir, ignore_errors=True)
        atomic_write(self.done_file, b"")

    def discard(self) -> None:
        """A rank done, or nobody will watch again (its stack is going down): what is left of
        its processes, its home, and with the run's last home here its uid's lease."""
        if (cgroup := self.record().cgroup) is not None:
            Cgroup(cgroup).remove()
        self.free()
        if self.home != self.root:
            Homes(self.home.parents[2]).close(self.home, self.key.run_id)

    def free(self) -> None:
        """Remove the home of a rank that is done (its workspace, its virtual environment)."""
        shutil.rmtree(self.home, ignore_errors=True)


def local_ranks(data_dir: Path) -> list[RankDir]:
    """Every rank begun on this node and not done, oldest run directories first."""
    found = [
        RankDir(path.parent)
        for path in (data_dir / RANKS).glob(f"*/*/*/{ondisk.RECORD}")
        if path.parent.name.isdigit() and path.parent.parent.name.isdigit()
    ]
    pending = [rank_dir for rank_dir in found if not rank_dir.is_done()]
    return sorted(pending, key=lambda rank_dir: rank_dir.record_file.stat().st_mtime)


def ended_ranks(data_dir: Path) -> list[RankDir]:
    """Ranks done whose home is still there (the agent died before it removed it)."""
    found = (RankDir(path.parent) for path in (data_dir / RANKS).glob(f"*/*/*/{ondisk.DONE}"))
    return [
        rank_dir for rank_dir in found if rank_dir.home != rank_dir.root and rank_dir.home.exists()
    ]
