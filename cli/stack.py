"""The local stack: a private Valkey server, every runplane service and the API server as
background processes, kept running by a supervisor (``cli.supervisor``).

``mcli dev up`` and the end-to-end tests both use it: the scheduler, the projector, the
log-collector, the API server and one node-agent per simulated node; the log on one server, or
on a local Valkey Cluster (``StackConfig.shards``, ``.replicas``: ``services.core.
valkey_cluster``), whose every service is told so (``RUNPLANE_REDIS_CLUSTER``, with its first
node as ``RUNPLANE_REDIS_URL`` and ``RUNPLANE_APPEND_REPLICAS``). Invariants:
- Everything lives under one state directory (its files: ``cli.stackfiles``; what each
  service is started with: ``cli.stackenv``): the server's
  data (AOF on), each process's log, each node's data directory, ``stack.json`` (what the stack
  runs, with the ports chosen at ``up``) and ``supervisor.json`` (each process's pid, restarts
  and last exit), so any later command (or a second ``dev up``) finds a running stack by
  itself. A stack runs while its supervisor or any of its processes runs.
- The server runs with ACL users (``services.core.acl``): each service logs in as its own,
  with its password's file (``secrets/``, drawn at the first ``up``, kept after), never the
  password itself in an environment or a command line; the CLI and the tests as the operator
  (``operator_settings``). The keyring that seals users' secrets is drawn there too, and named
  to the API server and the node-agents only.
- Only the supervisor starts a process of the stack, so two copies of one never run. It is
  started detached (its own session) and outlives the command that started it, as the
  processes it starts do.
- A cluster's layout (its nodes' ports) is drawn at its first ``up`` and kept: a later ``up``
  of the same shape starts the same nodes on the same ports, their data and their cluster
  (``nodes.conf``) as they were; an ``up`` of another shape is refused.
- ``down`` stops the supervisor first (so nothing is started again meanwhile), then every
  service with SIGTERM, then SIGKILL after a grace period, then the servers, then any rank a node
  left running (a rank's shim outlives its node-agent by design, so that a restarted agent
  adopts it; nothing would adopt it once the stack is down).
- ``kill``/``start`` of one process exist for crash tests: kill -9, held down (the supervisor
  leaves it) until ``start`` asks the supervisor for it again.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli.errors import StackError
from cli.stackenv import free_ports, log_settings, service_specs
from cli.stackfiles import (
    SERVER,
    STACK_FILE,
    SUPERVISION_FILE,
    Pid,
    Record,
    ServiceSpec,
    StackConfig,
    StackFile,
    Supervision,
    cluster_dir,
    hold,
    logs_dir,
    operator_login,
    release,
    replication_conf,
    secrets_dir,
    state_dir,
)
from services.core import acl, passwords, sealing
from services.core.settings import Settings
from services.core.valkey import HOST, server_binary
from services.core.valkey_cluster import Layout, ValkeyCluster
from services.node_agent.container import naming
from services.node_agent.job import RankKey
from services.node_agent.process.rankdir import local_ranks
from services.node_agent.shim.ondisk import kill_group

__all__ = ["LocalStack", "ServiceSpec", "StackConfig", "StackError", "logs_dir", "state_dir"]

_STARTED_S = 60.0
_POLL_S = 0.02


def current_user() -> str:
    """Who runs ``mcli dev up``: the local stack's admin (``RUNPLANE_USER``, else the login
    name). Only the stack's setup reads it; every request is its key's owner's."""
    return os.environ.get("RUNPLANE_USER") or getpass.getuser()


def operator_settings() -> Settings:
    """How an operator's command (``mcli projections rebuild``) reaches the log:
    ``RUNPLANE_REDIS_URL`` with ``RUNPLANE_REDIS_USERNAME``/``_PASSWORD_FILE`` as set, else the
    local stack's server as its operator."""
    if os.environ.get("RUNPLANE_REDIS_URL"):
        return Settings()
    stack = LocalStack.find(state_dir())
    if stack is None:
        raise StackError(
            "no runplane log to work on: start a local stack with `mcli dev up`, "
            "or set RUNPLANE_REDIS_URL to your deployment's Valkey"
        )
    return stack.operator_settings()


class LocalStack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.config = StackConfig()
        self.services: dict[str, ServiceSpec] = {}
        self.valkey_port = 0
        self.api_port = 0
        # The supervisor, when this process started it; kept so it is waited for, not left as
        # a zombie.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # --- finding it -------------------------------------------------------------------------

    @classmethod
    def find(cls, state_dir: Path) -> LocalStack | None:
        """The stack recorded under ``state_dir`` if its supervisor or any process of it runs."""
        saved = StackFile.load(state_dir)
        if saved is None:
            return None
        stack = cls(state_dir)
        stack._adopt(saved)
        if stack.supervisor() is None and not any(r.running() for r in stack.records().values()):
            return None
        return stack

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.valkey_port}/0"

    @property
    def api_url(self) -> str:
        """Where the API server answers (GraphQL over HTTP POST)."""
        return f"http://{HOST}:{self.api_port}/graphql"

    @property
    def console_url(self) -> str:
        """Where the API server serves the web console."""
        return f"http://{HOST}:{self.api_port}/"

    def metrics_url(self, name: str) -> str | None:
        """Where service ``name`` serves its Prometheus metrics; None: nowhere (a stack of an
        older runplane)."""
        spec = self.services.get(name)
        if spec is None or spec.metrics_port is None:
            return None
        return f"http://{HOST}:{spec.metrics_port}/metrics"

    def records(self) -> dict[str, Record]:
        """Each supervised process (``valkey`` first, then each service) as the supervisor
        last recorded it; empty before the supervisor wrote anything."""
        supervision = Supervision.load(self.state_dir)
        return {} if supervision is None else supervision.services

    def supervisor(self) -> Pid | None:
        """The supervisor's process, if it runs."""
        supervision = Supervision.load(self.state_dir)
        if supervision is None or not supervision.process.alive():
            return None
        return supervision.process

    def status(self) -> dict[str, int | None]:
        """Each service (not the server) with its pid, or None when it is not running."""
        records = self.records()
        return {name: _pid(records.get(name)) for name in self.services}

    @property
    def servers(self) -> list[str]:
        """The log's servers' names: ``valkey``, or each cluster node's (``valkey-0``, ...)."""
        return self.config.server_names()

    def server_pid(self) -> int | None:
        """The server's pid (on a cluster: its first node's)."""
        return _pid(self.records().get(self.servers[0]))

    def missing(self) -> list[str]:
        """The processes (the servers and the nodes included) that are not running."""
        records = self.records()
        return [name for name in (*self.servers, *self.services) if _pid(records.get(name)) is None]

    def valkey_cluster(self) -> ValkeyCluster | None:
        """The stack's cluster, as the operator reaches it (its nodes' handles are not its
        processes: the supervisor's are); None on one server."""
        if not self.config.is_cluster:
            return None
        layout = Layout.load(cluster_dir(self.state_dir))
        if layout is None:
            return None
        return ValkeyCluster(
            cluster_dir(self.state_dir), layout, login=operator_login(self.state_dir)
        )

    def node_of(self, name: str) -> str | None:
        """The node a service runs (its ``RUNPLANE_NODE``), or None for a service."""
        spec = self.services.get(name)
        return None if spec is None else spec.env.get("RUNPLANE_NODE")

    def log_of(self, name: str) -> Path:
        if name == SERVER:
            return self.state_dir / "valkey" / "valkey.log"
        if name in self.servers:
            return cluster_dir(self.state_dir) / f"node-{self.servers.index(name)}" / "valkey.log"
        return logs_dir(self.state_dir) / f"{name}.log"

    # --- life cycle -----------------------------------------------------------------------

    def up(self, config: StackConfig) -> None:
        """Start the supervisor of a new stack; return once it has started every process."""
        if LocalStack.find(self.state_dir) is not None:
            raise StackError(f"a local stack is already running in {self.state_dir}")
        kept = kept_partitions(self.state_dir)
        if kept is not None and kept != config.partitions:
            raise StackError(
                f"the log kept in {self.state_dir} has {kept} partitions, and a log's partitions "
                f"never change: start it with `mcli dev up --partitions {kept}`, or remove "
                f"{self.state_dir} (its data) for another number"
            )
        self.config = config
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # the stack's secrets, logs and nodes: its user's alone
        logs_dir(self.state_dir).mkdir(exist_ok=True)
        self.valkey_port, self.api_port = free_ports(2)
        passwords.provision(secrets_dir(self.state_dir))  # kept if there: the server's data too
        sealing.provision(secrets_dir(self.state_dir))  # kept too: the sealed values need it
        if config.is_cluster:
            self.valkey_port = self._lay_out_cluster(config).ports[0]
        self.services = {spec.name: spec for spec in service_specs(self)}
        specs = list(self.services.values())
        binary = str(server_binary())
        StackFile(config, binary, self.valkey_port, self.api_port, specs).save(self.state_dir)
        # A new stack: no restarts counted, nothing held, from a stack that ran here before.
        (self.state_dir / SUPERVISION_FILE).unlink(missing_ok=True)
        release(self.state_dir)
        self.supervise()

    def _lay_out_cluster(self, config: StackConfig) -> Layout:
        """The cluster's layout: the one kept in the state directory if it has this shape,
        else a new one; its replicas' login written (``ValkeyCluster.prepare``)."""
        assert config.shards is not None
        directory = cluster_dir(self.state_dir)
        layout = Layout.load(directory)
        if layout is not None and (layout.shards, layout.replicas) != (
            config.shards,
            config.replicas,
        ):
            raise StackError(
                f"{directory} holds a cluster of {layout.shards} shards with {layout.replicas} "
                f"replicas each: start it with `mcli dev up --shards {layout.shards} --replicas "
                f"{layout.replicas}`, or remove {directory} (its data) for another shape"
            )
        if layout is None:
            layout = Layout.new(config.shards, config.replicas, taken={self.api_port})
        elif self.api_port in {*layout.ports, *layout.buses}:
            self.api_port = free_ports(1, taken={*layout.ports, *layout.buses})[0]
        secrets = secrets_dir(self.state_dir)
        ValkeyCluster(
            directory,
            layout,
            replication=(acl.REPLICATION, passwords.password_file(secrets, acl.REPLICATION)),
            replication_conf=replication_conf(self.state_dir),
        ).prepare()
        return layout

    def supervise(self) -> bool:
        """Start the supervisor if it does not run (it adopts what runs and starts the rest),
        and wait until every process that is not held runs; whether it was started."""
        if self.supervisor() is not None:
            return False
        with (logs_dir(self.state_dir) / "supervisor.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cli.supervisor", str(self.state_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=self.state_dir,
            )
        self._children[process.pid] = process
        self._wait_started(process)
        return True

    def start_down(self) -> None:
        """Ask the supervisor to start at once every process that is down, held ones too."""
        release(self.state_dir)
        self._signal_supervisor(signal.SIGHUP)

    def down(self, grace_s: float = 10.0) -> list[RankKey]:
        """Stop the supervisor, every service, the server, then every rank still running on a
        node (killed: the ranks a command stopped first have ended already); the ranks
        killed."""
        supervisor = self.supervisor()
        if supervisor is not None:
            _signal(supervisor, signal.SIGTERM)
            if not self._wait_gone(supervisor, grace_s):
                _signal(supervisor, signal.SIGKILL)  # stopped, or hung: it must not restart
                self._wait_gone(supervisor, grace_s)
        records = self.records()
        running = [p for n in self.services if (p := _running(records.get(n))) is not None]
        for process in running:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            self._wait_gone(process, max(deadline - time.monotonic(), 0.0))
            _signal(process, signal.SIGKILL)
            self._wait_gone(process, grace_s)
        servers = [p for n in self.servers if (p := _running(records.get(n))) is not None]
        for server in servers:
            _signal(server, signal.SIGTERM)  # the server fsyncs its AOF and exits
        for server in servers:
            self._wait_gone(server, grace_s)
            _signal(server, signal.SIGKILL)
            self._wait_gone(server, grace_s)
        (self.state_dir / STACK_FILE).unlink(missing_ok=True)
        (self.state_dir / SUPERVISION_FILE).unlink(missing_ok=True)
        release(self.state_dir)
        return self._kill_ranks()

    def kill(self, name: str) -> None:
        """kill -9 one process (``valkey``, or a service), as a crash would, and keep it down
        until ``start``."""
        hold(self.state_dir, name)
        process = _running(self.records().get(name))
        if process is not None:
            _signal(process, signal.SIGKILL)
            self._wait_gone(process, 10.0)

    def start(self, name: str, within_s: float = _STARTED_S) -> int:
        """Have the supervisor start one process again (see ``kill``); its pid, once it runs."""
        if (pid := _pid(self.records().get(name))) is not None:
            raise StackError(f"{name} is running already (pid {pid})")
        release(self.state_dir, name)
        self._signal_supervisor(signal.SIGHUP)
        deadline = time.monotonic() + within_s
        while (pid := _pid(self.records().get(name))) is None:
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not start within {within_s:g}s: see its log")
            time.sleep(_POLL_S)  # allowed: polling inside a deadline loop
        return pid

    # --- internals --------------------------------------------------------------------

    def _adopt(self, saved: StackFile) -> None:
        self.config = saved.config
        self.valkey_port, self.api_port = saved.valkey_port, saved.api_port
        self.services = {spec.name: spec for spec in saved.services}

    def operator_settings(self, url: str | None = None) -> Settings:
        """How the CLI, the benchmarks and the tests reach the stack's server (at ``url``, by
        default the one ``stack.json`` names): as its operator."""
        user, password_file = operator_login(self.state_dir)
        return Settings(
            redis_url=url or self.url,
            redis_username=user,
            redis_password_file=password_file,
            **log_settings(self.config),
        )

    def _wait_started(self, supervisor: subprocess.Popen[bytes]) -> None:
        """Until the supervisor has recorded every process that is not held as running."""
        deadline = time.monotonic() + _STARTED_S
        while True:
            if supervisor.poll() is not None:
                raise StackError(
                    f"the stack's supervisor exited ({supervisor.returncode}); its log ends "
                    f"with:\n{_tail(logs_dir(self.state_dir) / 'supervisor.log')}"
                )
            supervision = Supervision.load(self.state_dir)
            if supervision is not None and supervision.pid == supervisor.pid:
                waiting = [
                    n for n, r in supervision.services.items() if r.state not in ("running", "held")
                ]
                expected = len(self.services) + len(self.servers)
                if not waiting and len(supervision.services) == expected:
                    return
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{', '.join(waiting)} did not start within {_STARTED_S:g}s; "
                        f"{waiting[0]}'s log ends with:\n{_tail(self.log_of(waiting[0]))}"
                    )
            elif time.monotonic() > deadline:
                raise StackError(f"the stack's supervisor did not start in {_STARTED_S:g}s")
            time.sleep(_POLL_S)  # allowed: polling inside a deadline loop

    def _signal_supervisor(self, sig: signal.Signals) -> None:
        supervisor = self.supervisor()
        if supervisor is None:
            raise StackError(
                "the local stack's supervisor is not running: `mcli dev up` starts it again"
            )
        _signal(supervisor, sig)

    def _wait_gone(self, process: Pid, within_s: float) -> bool:
        """Wait until ``process`` has ended (collect it if it is our child); whether it has."""
        child = self._children.pop(process.pid, None)
        if child is not None:
            try:
                child.wait(timeout=within_s)
            except subprocess.TimeoutExpired:
                self._children[process.pid] = child
                return False
            return True
        deadline = time.monotonic() + within_s
        while process.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)  # allowed: polling inside a deadline loop
        return True

    def _kill_ranks(self) -> list[RankKey]:
        killed = []
        for spec in self.services.values():
            data_dir = spec.env.get("RUNPLANE_DATA_DIR")  # a node's, where its ranks live
            if data_dir is None:
                continue
            if spec.env.get("RUNPLANE_EXECUTOR") == "container":
                killed += remove_containers(spec.env.get("RUNPLANE_NODE", spec.name))
                continue
            for rank_dir in local_ranks(Path(data_dir)):
                if rank_dir.shim_alive():
                    kill_group(rank_dir.command_pid())
                    kill_group(rank_dir.shim_pid())  # its own session: its group is its pid
                    killed.append(rank_dir.key)
                rank_dir.discard()  # what left the group (a daemon) goes too, and its home
        return killed


def remove_containers(node: str, engine: str = "podman") -> list[RankKey]:
    """Remove every container a node's agent ran (its ranks, their integrations); the ranks
    whose command's container was running. The engine's settings are this process's
    environment's (CONTAINERS_CONF), as they were the agents'."""
    filters = [arg for value in naming.node_filters(node) for arg in ("--filter", value)]
    try:
        listed = subprocess.run(
            [engine, "ps", "--all", *filters, "--format", "json"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        found = json.loads(listed.stdout or b"[]")
        names = [str(c["Names"][0]) for c in found if c.get("Names")]
        if names:
            subprocess.run(
                [engine, "rm", "--force", "--ignore", "--time", "0", *names],
                capture_output=True, check=True, timeout=120,
            )  # fmt: skip
    except (OSError, ValueError, subprocess.SubprocessError):
        return []  # no engine to ask (the agents could not have run any)
    running = [c for c in found if c.get("State") == "running" and naming.is_rank(c.get("Labels"))]
    return [key for c in running if (key := naming.key_of(c.get("Labels"))) is not None]


def kept_partitions(state_dir: Path) -> int | None:
    """The partitions of the log an earlier stack left in ``state_dir``; None if none did."""
    saved = StackFile.load(state_dir)
    return None if saved is None else saved.config.partitions


def _running(record: Record | None) -> Pid | None:
    return None if record is None else record.running()


def _pid(record: Record | None) -> int | None:
    process = _running(record)
    return None if process is None else process.pid


def _signal(process: Pid, sig: signal.Signals) -> None:
    """Signal ``process`` if it still runs (never a stranger who got its pid since)."""
    if process.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
