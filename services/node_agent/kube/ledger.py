"""The ranks this agent has begun on the ``kubernetes`` executor, on its disk.

``begin`` records a rank before the log entry that placed it is acknowledged (the agent's
invariant), and before its Pod exists: a kill -9 in between leaves the record, and the
restarted agent creates the Pod then. ``done`` forgets it once its exit is reported and its Pod
deleted. The cluster is the other half of the record: a Pod found by label is adopted even
without a record here (an agent whose data directory did not survive, in a Pod of its own).

Each record also holds, per container, the timestamp of the last output line sent, so an
adopted rank's output goes on where it stopped instead of being sent twice.

One file per rank: ``<data_dir>/kube/<run>/<attempt>/<rank>.json``, written atomically.
"""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec

from services.node_agent.job import RankKey
from services.node_agent.shim.ondisk import atomic_write


class Record(msgspec.Struct, kw_only=True):
    run_id: str
    attempt: int
    rank: int
    #: container name -> the Kubernetes timestamp of its last line sent (RFC 3339, nanoseconds)
    sent_until: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def key(self) -> RankKey:
        return RankKey(self.run_id, self.attempt, self.rank)


class Ledger:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "kube"
        self._lock = threading.Lock()  # log followers record progress from their threads

    def _path(self, key: RankKey) -> Path:
        return self.root / key.run_id / str(key.attempt) / f"{key.rank}.json"

    def begin(self, key: RankKey) -> None:
        if not self._path(key).exists():
            self._write(Record(run_id=key.run_id, attempt=key.attempt, rank=key.rank))

    def keys(self) -> list[RankKey]:
        return sorted(record.key for record in self._records())

    def get(self, key: RankKey) -> Record | None:
        try:
            return msgspec.json.decode(self._path(key).read_bytes(), type=Record)
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def sent(self, key: RankKey, container: str, until: str) -> None:
        with self._lock:
            record = self.get(key)
            if record is None:
                return  # the rank is done: nothing to resume any more
            record.sent_until[container] = until
            self._write(record)

    def done(self, key: RankKey) -> None:
        path = self._path(key)
        with self._lock:
            path.unlink(missing_ok=True)
        for parent in (path.parent, path.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: another rank or attempt of the run is recorded

    def _records(self) -> list[Record]:
        records = []
        for path in self.root.glob("*/*/*.json"):
            try:
                records.append(msgspec.json.decode(path.read_bytes(), type=Record))
            except (OSError, msgspec.DecodeError):
                continue  # a torn write cannot happen (atomic); a stray file is not ours
        return records

    def _write(self, record: Record) -> None:
        path = self._path(record.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, msgspec.json.encode(record))
