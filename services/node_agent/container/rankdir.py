"""A container rank's files on this node: what its containers mount, and what survives a
kill -9 of the agent beside the containers themselves.

``<data_dir>/containers/<run_id>/<attempt>/<rank>/`` holds:

- ``rank.json``: which rank this is, written before any event of the rank is reported (so a
  restarted agent knows every rank it began, even one whose container does not exist yet),
  the setups begun, and the time of the last output line sent per stream, so an adopted
  rank's output goes on where it stopped instead of being sent twice;
- ``shared/``: mounted at ``/runplane`` in every container of the rank (the workspace, the
  virtual environment); ``parameters.yaml``; ``token`` (0600, the run token, mounted
  read-only); ``secrets/`` (0700: the owner's mounted secrets, written by the provider);
- ``env`` (0600): the command's environment, read by the engine when it creates the container,
  then removed; ``auth.json`` (0600): registry logins for the pull, removed after it;
- ``engine/``: the working directory of the ``run`` that starts the command's container, where
  podman's monitor leaves its OOM marker (``oom``) on cgroup v1;
- ``done``: the rank's exit was reported (or the log had moved on); nothing more to do.

Everything but ``rank.json`` and ``done`` goes when the rank is done.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import msgspec

from services.node_agent.job import RankKey
from services.node_agent.shim.ondisk import atomic_write

ROOT = "containers"
OOM_MARKER = "oom"


class Record(msgspec.Struct, kw_only=True):
    run_id: str
    attempt: int
    rank: int
    setup_tries: int = 1
    #: stream (stdout, stderr) -> the engine's timestamp of its last line sent (RFC 3339)
    sent_until: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def key(self) -> RankKey:
        return RankKey(self.run_id, self.attempt, self.rank)


class RankFiles:
    _lock = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self.record_file = root / "rank.json"
        self.done_file = root / "done"
        self.shared = root / "shared"
        self.parameters = root / "parameters.yaml"
        self.token = root / "token"
        self.secrets = root / "secrets"
        self.env_file = root / "env"
        self.auth_file = root / "auth.json"
        self.engine_dir = root / "engine"

    @classmethod
    def of(cls, data_dir: Path, key: RankKey) -> RankFiles:
        if "/" in key.run_id or key.run_id in ("", ".", ".."):
            raise ValueError(f"not a run id: {key.run_id!r}")
        return cls(data_dir / ROOT / key.run_id / str(key.attempt) / str(key.rank))

    @property
    def key(self) -> RankKey:
        """Which rank this is, from the path (it holds even when a file is damaged)."""
        attempt = self.root.parent
        return RankKey(attempt.parent.name, int(attempt.name), int(self.root.name))

    def create(self, key: RankKey) -> None:
        self.prepare()
        if not self.record_file.exists():
            self._write(Record(run_id=key.run_id, attempt=key.attempt, rank=key.rank))

    def prepare(self) -> None:
        """The directories a setup fills (again, after ``wipe``)."""
        for path in (self.shared, self.engine_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)

    def record(self) -> Record:
        try:
            return msgspec.json.decode(self.record_file.read_bytes(), type=Record)
        except (OSError, msgspec.DecodeError):
            key = self.key  # a file a power loss emptied: what the path says, first try
            return Record(run_id=key.run_id, attempt=key.attempt, rank=key.rank)

    def begin_setup_again(self) -> int:
        """Wipe what an interrupted setup left; the number of setups begun, this one included."""
        record = self.record()
        record.setup_tries += 1
        self._write(record)
        self.wipe()
        self.prepare()
        return record.setup_tries

    def sent(self, stream: str, until: str) -> None:
        """The last line of ``stream`` sent was stamped ``until``."""
        with self._lock:
            if self.is_done():
                return
            record = self.record()
            record.sent_until[stream] = until
            self._write(record)

    def is_done(self) -> bool:
        return self.done_file.exists()

    def mark_done(self) -> None:
        """Nothing more to do for this rank; its token and secrets go at once (they work no
        more, and are nobody's business)."""
        for path in (self.token, self.env_file, self.auth_file):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.secrets, ignore_errors=True)
        atomic_write(self.done_file, b"")

    def wipe(self) -> None:
        """Remove what the rank's setup and containers used (slow for a big workspace)."""
        for path in (self.shared, self.secrets, self.engine_dir):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.token, self.env_file, self.auth_file, self.parameters):
            path.unlink(missing_ok=True)

    def _write(self, record: Record) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.record_file, msgspec.json.encode(record))


def pending(data_dir: Path) -> list[RankKey]:
    """Every rank begun on this node and not done."""
    found = []
    for path in (data_dir / ROOT).glob("*/*/*/rank.json"):
        files = RankFiles(path.parent)
        if path.parent.name.isdigit() and path.parent.parent.name.isdigit() and not files.is_done():
            found.append(files.key)
    return sorted(found)
