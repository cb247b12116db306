"""The local stack: a private Valkey server and every runplane service as background processes.

``mcli dev up`` and the end-to-end tests both use it: the scheduler, the projector, the
log-collector and one node-agent per simulated node. Invariants:
- Everything lives under one state directory: the server's data (AOF on), each service's
  log file (and ``mcli.log``: what library code logs inside mcli commands), each node's data
  directory, and ``stack.json`` (what runs, with pids), so any later command (or a second
  ``dev up``) finds a running stack by itself.
- Services are started detached (their own session), so they outlive the command that started
  them; ``down`` stops them with SIGTERM, then SIGKILL after a grace period, then the server,
  then any rank a node left running (a rank's shim outlives its node-agent by design, so that
  a restarted agent adopts it; nothing would adopt it once the stack is down).
- ``missing``/``start`` bring back a service or node that died while the stack runs.
- ``kill``/``start`` of one service exist for crash tests: kill -9 and start again in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.core.valkey import ValkeyProcess
from services.node_agent.job import RankKey
from services.node_agent.process.rankdir import local_ranks
from services.node_agent.shim.ondisk import kill_group

STATE_FILE = "stack.json"


def logs_dir(state_dir: Path) -> Path:
    """Where the stack's processes write their logs: ``<service>.log``, and ``mcli.log`` for
    what library code logs in the mcli command (never on the user's terminal)."""
    return state_dir / "logs"


class StackError(RuntimeError):
    """The stack could not be started, found or stopped; the message says what to do."""


@dataclass
class ServiceSpec:
    name: str  # unique within the stack: "scheduler", "node-0", ...
    module: str  # python -m <module>
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None


@dataclass
class StackConfig:
    nodes: int = 2
    #: Simulated GPUs of each node; None: each node-agent finds the machine's with nvidia-smi.
    gpus_per_node: int | None = 8
    gpu_type: str = "a100_80gb"
    cluster: str = "local"
    grace_period_s: float = 30.0
    extra_env: dict[str, str] = field(default_factory=dict)


class LocalStack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.server = ValkeyProcess(state_dir / "valkey", detach=True)
        self.services: dict[str, ServiceSpec] = {}
        self.config = StackConfig()
        # Children this process started; kept so they are waited for, not left as zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # --- life cycle -----------------------------------------------------------------

    @classmethod
    def find(cls, state_dir: Path) -> LocalStack | None:
        """The stack recorded under ``state_dir`` if its server still runs."""
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        stack = cls(state_dir)
        adopted = ValkeyProcess.adopt(state_dir / "valkey")
        if adopted is None:
            return None
        stack.server = adopted
        saved = json.loads(path.read_text())
        stack.config = StackConfig(**saved["config"])
        stack.services = {s["name"]: ServiceSpec(**s) for s in saved["services"]}
        return stack

    @property
    def url(self) -> str:
        return self.server.url

    def up(self, config: StackConfig) -> None:
        if LocalStack.find(self.state_dir) is not None:
            raise StackError(f"a local stack is already running in {self.state_dir}")
        self.config = config
        self.state_dir.mkdir(parents=True, exist_ok=True)
        logs_dir(self.state_dir).mkdir(exist_ok=True)
        self.server.start()
        self.services = {spec.name: spec for spec in self._specs()}
        for spec in self.services.values():
            self.start(spec.name)

    def down(self, grace_s: float = 10.0) -> list[RankKey]:
        """Stop every service, the server, then every rank still running on a node (killed:
        the ranks a command stopped first have ended already); the ranks killed."""
        for spec in self.services.values():
            _signal(spec.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for spec in self.services.values():
            while _alive(spec.pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # allowed: polling inside a deadline loop
            _signal(spec.pid, signal.SIGKILL)
            self._reap(spec.pid)
            spec.pid = None
        self.server.stop()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        return self._kill_ranks()

    def start(self, name: str) -> int:
        """Start (or start again) one service; returns its pid."""
        spec = self.services[name]
        if _alive(spec.pid):
            raise StackError(f"{name} is running already (pid {spec.pid})")
        env = {**os.environ, **self.config.extra_env, **spec.env, "RUNPLANE_REDIS_URL": self.url}
        with self.log_of(name).open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=self.state_dir,
            )
        spec.pid = process.pid
        self._children[process.pid] = process
        self._save()
        return process.pid

    def kill(self, name: str) -> None:
        """kill -9 one service, as a crash would."""
        spec = self.services[name]
        _signal(spec.pid, signal.SIGKILL)
        self._reap(spec.pid)
        spec.pid = None
        self._save()

    def missing(self) -> list[str]:
        """The services (nodes included) that are not running."""
        return [name for name, pid in self.status().items() if pid is None]

    def node_of(self, name: str) -> str | None:
        """The node a service runs (its ``RUNPLANE_NODE``), or None for a service."""
        return self.services[name].env.get("RUNPLANE_NODE")

    def status(self) -> dict[str, int | None]:
        """Each service with its pid, or None when it is not running."""
        return {
            name: spec.pid if _alive(spec.pid) else None for name, spec in self.services.items()
        }

    def log_of(self, name: str) -> Path:
        return logs_dir(self.state_dir) / f"{name}.log"

    # --- internals --------------------------------------------------------------------

    def _specs(self) -> list[ServiceSpec]:
        config = self.config
        specs = [
            ServiceSpec("scheduler", "services.scheduler"),
            ServiceSpec("projector", "services.projector"),
            ServiceSpec(
                "log-collector",
                "services.log_collector",
                {"RUNPLANE_ARCHIVE_DIR": str(self.state_dir / "archive")},
            ),
        ]
        for n in range(config.nodes):
            name = f"node-{n}"
            env = {
                "RUNPLANE_NODE": name,
                "RUNPLANE_CLUSTER": config.cluster,
                "RUNPLANE_DATA_DIR": str(self.state_dir / "nodes" / name),
                "RUNPLANE_GRACE_PERIOD_S": str(config.grace_period_s),
            }
            if config.gpus_per_node is not None:
                env["RUNPLANE_GPUS"] = str(config.gpus_per_node)
                env["RUNPLANE_GPU_TYPE"] = config.gpu_type
            specs.append(ServiceSpec(name, "services.node_agent", env))
        return specs

    def _kill_ranks(self) -> list[RankKey]:
        killed = []
        for spec in self.services.values():
            data_dir = spec.env.get("RUNPLANE_DATA_DIR")  # a node's, where its ranks live
            if data_dir is None:
                continue
            for rank_dir in local_ranks(Path(data_dir)):
                if rank_dir.shim_alive():
                    kill_group(rank_dir.command_pid())
                    kill_group(rank_dir.shim_pid())  # its own session: its group is its pid
                    killed.append(rank_dir.key)
        return killed

    def _reap(self, pid: int | None, within_s: float = 10.0) -> None:
        """Wait until a killed process is gone: collect it if it is our child, else watch it."""
        if pid is None:
            return
        child = self._children.pop(pid, None)
        if child is not None:
            child.wait(timeout=within_s)
            return
        deadline = time.monotonic() + within_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # allowed: polling inside a deadline loop

    def _save(self) -> None:
        state = {
            "url": self.url,
            "config": asdict(self.config),
            "services": [asdict(spec) for spec in self.services.values()],
        }
        tmp = self.state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _signal(pid: int | None, sig: signal.Signals) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
