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
- ``token``: the rank's run token (0600; ``services.node_agent.runtoken``), removed when the rank
  is done.
- ``secrets/``: the run owner's secret files (0600, directories 0700), each at its mount path
  under it (``/secrets/db/secret`` is ``secrets/secrets/db/secret``;
  ``services.node_agent.secrets``), written before setup and removed when the rank is done.
- ``workspace/`` (the command's cwd) and ``venv/`` (when an integration needed one).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import msgspec

from services.node_agent.job import ExitStatus, RankKey
from services.node_agent.shim import ondisk
from services.node_agent.shim.ondisk import atomic_write, kill_group, read_pid

RANKS = "ranks"


class ShimSpec(msgspec.Struct, kw_only=True, frozen=True):
    run_id: str
    attempt: int
    rank: int
    command: str
    cwd: str
    env: dict[str, str]
    redis_url: str
    #: The agent's login, the password as its file's name (the spec is on disk, and read by
    #: the shim only when it connects): never the password itself.
    redis_username: str | None = None
    redis_password_file: str | None = None
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

    @property
    def key(self) -> RankKey:
        return RankKey(self.run_id, self.attempt, self.rank)


class RankDir:
    def __init__(self, root: Path) -> None:
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
        self.token_file = root / "token"
        self.secrets_dir = root / "secrets"
        self.workspace = root / "workspace"
        self.venv = root / "venv"

    @classmethod
    def of(cls, data_dir: Path, key: RankKey) -> RankDir:
        if "/" in key.run_id or key.run_id in ("", ".", ".."):
            raise ValueError(f"not a run id: {key.run_id!r}")
        return cls(data_dir / RANKS / key.run_id / str(key.attempt) / str(key.rank))

    # --- the record ------------------------------------------------------------------

    def create(self, key: RankKey) -> None:
        self.workspace.mkdir(parents=True, exist_ok=True)
        record = RankRecord(run_id=key.run_id, attempt=key.attempt, rank=key.rank)
        atomic_write(self.record_file, msgspec.json.encode(record))

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
        record = self.record()
        record.setup_tries += 1
        atomic_write(self.record_file, msgspec.json.encode(record))
        kill_group(read_pid(self.setup_pid_file))  # a tool the interrupted setup left running
        for path in (self.workspace, self.venv):
            shutil.rmtree(path, ignore_errors=True)
        self.workspace.mkdir(parents=True, exist_ok=True)
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
        its token and its secrets go: they are nobody's business now)."""
        self.token_file.unlink(missing_ok=True)
        shutil.rmtree(self.secrets_dir, ignore_errors=True)
        atomic_write(self.done_file, b"")

    def free(self) -> None:
        """Remove the workspace and the virtual environment of a rank that is done."""
        for path in (self.workspace, self.venv):
            shutil.rmtree(path, ignore_errors=True)


def local_ranks(data_dir: Path) -> list[RankDir]:
    """Every rank begun on this node and not done, oldest run directories first."""
    found = [
        RankDir(path.parent)
        for path in (data_dir / RANKS).glob(f"*/*/*/{ondisk.RECORD}")
        if path.parent.name.isdigit() and path.parent.parent.name.isdigit()
    ]
    pending = [rank_dir for rank_dir in found if not rank_dir.is_done()]
    return sorted(pending, key=lambda rank_dir: rank_dir.record_file.stat().st_mtime)
