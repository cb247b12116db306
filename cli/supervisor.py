"""``python -m cli.supervisor STATE_DIR``: the local stack's supervisor, started detached by
``mcli dev up``. It starts every process of the stack (the Valkey server first, or every node
of a cluster and then forms it, then each service that ``stack.json`` names) and starts again
any that dies, like compose's ``restart: unless-stopped``.

It lives in ``cli/`` because it is part of the local stack, a development convenience beside
``cli.stack``, and not a runplane service: services never start one another, and a real
deployment supervises its processes with its own tools (compose's restart policy, Kubernetes).
It imports only the state files (``cli.stackfiles``), the Valkey launcher and cluster former
(``services.core.valkey``, ``services.core.valkey_cluster``: plain sockets, no client library)
and a logger of the standard library's (``services.core.plainlog``), so that it stays small in
memory.

Invariants:
- One supervisor per state directory: it holds an exclusive lock (``supervisor.lock``) while it
  runs, and a second one exits at once. Only the supervisor starts a service, so two copies of
  one service never run.
- It waits, never polls: every process it watches has a pidfd in one selector, beside the fd
  that signals wake; the selector's timeout is the time to the next restart due. A child that
  ended is reaped (``waitpid``) for its exit status.
- A service that ends is started again after a delay that doubles from 0.1 s up to 30 s, and is
  0.1 s again once a process has stayed up 10 s (``next_delay``; Docker's restart policy). A held
  service (``held/<name>``, see ``cli.stackfiles``) is left down.
- SIGHUP: start at once every service that is down and not held (what ``mcli dev up`` asks).
  SIGTERM or SIGINT: exit at once, and leave the services running (``mcli dev down`` stops them
  next; a new supervisor adopts them).
- On start it adopts each process its predecessor recorded that still runs (same pid, same start
  time), keeps the restart counts, and starts the others.
- On a cluster, the services start once every node runs and the cluster is formed (or, formed
  before, says ``cluster_state:ok``): ``valkey_cluster.form``. A node that dies is started
  again like a service, from its data dir: its ``nodes.conf`` brings it back into the cluster
  (a primary failed over meanwhile comes back as a replica).
- ``supervisor.json`` is written after every change (``cli.stackfiles.Supervision``).
- A service gets the environment of whoever started the stack, without the client's settings
  (``MOSAICML_*``, ``MCLI_*``: the admin's key, once exported, must not reach a run) and
  without any login to the server but its own (``stack.json`` names its ACL user and its
  password's file; the server starts with the ACL file: ``services.core.acl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cli.stackfiles import (
    Pid,
    Record,
    ServiceSpec,
    StackFile,
    Supervision,
    cluster_dir,
    is_held,
    logs_dir,
    operator_login,
    replication_conf,
    secrets_dir,
)
from services.core import acl, passwords
from services.core.plainlog import Logger
from services.core.valkey import ValkeyError, ValkeyProcess
from services.core.valkey_cluster import Layout, ValkeyCluster

INITIAL_DELAY_S = 0.1
MAX_DELAY_S = 30.0
STEADY_S = 10.0
LOCK_FILE = "supervisor.lock"
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: The client's settings (``eval "$(mcli dev env)"`` exports the admin's key) stay out of the
#: services' environment: a node's environment is its ranks', and no run may see that key. So
#: does any login to a server: each service gets its own from ``stack.json``.
_CLIENT_PREFIXES = ("MOSAICML_", "MCLI_", "RUNPLANE_REDIS_")
log = Logger("supervisor")  # structlog's lines without structlog (and asyncio): 8 MiB less


def next_delay(previous: float | None, up_for_s: float) -> float:
    """The wait before starting again a service whose process ended after ``up_for_s``;
    ``previous``: the wait before that process was started (None: it was the first start)."""
    if previous is None or up_for_s >= STEADY_S:
        return INITIAL_DELAY_S
    return min(previous * 2, MAX_DELAY_S)


def exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "unknown"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
    return f"exit {returncode}"


@dataclass
class _Watched:
    process: Pid
    pidfd: int
    since: float  # monotonic, when it started (or was adopted)
    child: subprocess.Popen[bytes] | ValkeyProcess | None  # None: adopted, not our child

    def reap(self) -> int | None:
        if isinstance(self.child, ValkeyProcess):
            return self.child.wait()
        return None if self.child is None else self.child.wait()


class Supervisor:
    def __init__(self, state_dir: Path, stack: StackFile) -> None:
        self.state_dir = state_dir
        self.stack = stack
        self.specs = {spec.name: spec for spec in stack.services}
        me = Pid.of(os.getpid())
        assert me is not None
        self.supervision = Supervision(pid=me.pid, started=me.started)
        self.watched: dict[str, _Watched] = {}
        self.delays: dict[str, float] = {}  # the wait before each service's latest start
        self.due: dict[str, float] = {}  # monotonic time of each restart pending
        self.selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.servers = stack.config.server_names()
        self.cluster = self._cluster()

    @property
    def names(self) -> list[str]:
        return [*self.servers, *self.specs]

    def _cluster(self) -> ValkeyCluster | None:
        if not self.stack.config.is_cluster:
            return None
        directory = cluster_dir(self.state_dir)
        layout = Layout.load(directory)
        if layout is None:
            raise ValkeyError(f"no cluster layout in {directory}: `mcli dev up` writes it")
        secrets = secrets_dir(self.state_dir)
        return ValkeyCluster(
            directory,
            layout,
            binary=Path(self.stack.valkey_binary),
            acl_file=passwords.acl_path(secrets),
            login=operator_login(self.state_dir),
            replication=(acl.REPLICATION, passwords.password_file(secrets, acl.REPLICATION)),
            replication_conf=replication_conf(self.state_dir),
            detach=True,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.stack.valkey_port}/0"

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        for sig in _SIGNALS:
            signal.signal(sig, lambda *_: None)  # the byte on the wakeup fd is what counts
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a service's task dump: none here
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._begin()
        while True:
            self.supervision.save(self.state_dir)
            timeout = None
            if self.due:
                timeout = max(min(self.due.values()) - time.monotonic(), 0.0)
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    received = set(os.read(self._wakeup_r, 512))
                    if received & {signal.SIGTERM, signal.SIGINT}:
                        log.info("supervisor_stopping", left_running=sorted(self.watched))
                        return
                    if signal.SIGHUP in received:
                        self._start_down_now()
                else:
                    self._ended(key.data)
            now = time.monotonic()
            for name in [n for n, at in self.due.items() if at <= now]:
                del self.due[name]
                self._start(name)

    def _begin(self) -> None:
        """Adopt what the previous supervisor left running; start the rest (Valkey first)."""
        previous = Supervision.load(self.state_dir)
        adopted = []
        for name in self.names:
            old = previous.services.get(name) if previous is not None else None
            record = (
                Record()
                if old is None
                else Record(
                    pid=old.pid, started=old.started, restarts=old.restarts, last_exit=old.last_exit
                )
            )
            self.supervision.services[name] = record
            process = old.running() if old is not None else None
            if process is not None:
                self._watch(name, process, None)
                adopted.append(name)
            elif old is not None and old.process is not None:
                record.last_exit = "unknown"  # it ended while no supervisor watched it
        log.info("supervisor_started", pid=os.getpid(), adopted=adopted)
        for name in self.servers:
            if name not in self.watched:
                self._start(name)
        if self.cluster is not None:
            self._form(self.cluster)
        for name in self.specs:
            if name not in self.watched:
                self._start(name)

    def _form(self, cluster: ValkeyCluster) -> None:
        """Form the cluster (or wait until it is ok); the services start after, either way:
        one that finds no cluster ends, and is started again."""
        try:
            cluster.form()
        except (OSError, ValkeyError) as failure:
            log.error("cluster_not_formed", error=str(failure))  # noqa: TRY400 - said in full
            return
        log.info("cluster_formed", nodes=len(cluster.nodes), url=cluster.url)

    def _start_down_now(self) -> None:
        for name in self.names:
            if name not in self.watched and not is_held(self.state_dir, name):
                self.due.pop(name, None)
                self.delays.pop(name, None)
                self._start(name)

    # --- one service ---------------------------------------------------------------------------

    def _start(self, name: str) -> None:
        record = self.supervision.services[name]
        if is_held(self.state_dir, name):
            record.state, record.retry_at = "held", None
            return
        again = record.started is not None
        try:
            child = self._launch(name)
        except (OSError, ValkeyError) as failure:
            log.warning("service_not_started", process=name, error=str(failure))
            record.last_exit = "not started"
            self._retry(name, record, up_for_s=0.0)
            return
        process = Pid.of(child.pid) if child.pid is not None else None
        if process is None:  # it ended already: the pidfd would name no one
            record.last_exit = exit_text(child.wait())
            self._retry(name, record, up_for_s=0.0)
            return
        self._watch(name, process, child)
        if again:
            record.restarts += 1
        log.info("service_started", process=name, pid=process.pid, restarts=record.restarts)

    def _launch(self, name: str) -> subprocess.Popen[bytes] | ValkeyProcess:
        if self.cluster is not None and name in self.servers:
            return self.cluster.node(self.servers.index(name)).start()
        if name in self.servers:
            server = ValkeyProcess(
                self.state_dir / "valkey",
                self.stack.valkey_port,
                detach=True,
                binary=Path(self.stack.valkey_binary),
                acl_file=passwords.acl_path(secrets_dir(self.state_dir)),
                login=operator_login(self.state_dir),
            )
            return server.start()  # the others may start once it answers
        spec: ServiceSpec = self.specs[name]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_PREFIXES)},
            **self.stack.config.extra_env,
            **spec.env,
            "RUNPLANE_REDIS_URL": self.stack.config.redis_urls.get(name, self.url),
        }
        log_file: IO[bytes]
        with (logs_dir(self.state_dir) / f"{name}.log").open("ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # its own session: a terminal's ^C never reaches it
                cwd=self.state_dir,
            )

    def _watch(
        self, name: str, process: Pid, child: subprocess.Popen[bytes] | ValkeyProcess | None
    ) -> None:
        pidfd = os.pidfd_open(process.pid)
        self.watched[name] = _Watched(process, pidfd, time.monotonic(), child)
        self.selector.register(pidfd, selectors.EVENT_READ, name)
        record = self.supervision.services[name]
        record.state, record.pid, record.started, record.retry_at = (
            "running",
            process.pid,
            process.started,
            None,
        )

    def _ended(self, name: str) -> None:
        watched = self.watched.pop(name)
        self.selector.unregister(watched.pidfd)
        os.close(watched.pidfd)
        record = self.supervision.services[name]
        record.last_exit = exit_text(watched.reap())
        up_for_s = time.monotonic() - watched.since
        log.warning(
            "service_exited",
            process=name,
            pid=watched.process.pid,
            exit=record.last_exit,
            up_for_s=round(up_for_s, 3),
        )
        self._retry(name, record, up_for_s)

    def _retry(self, name: str, record: Record, up_for_s: float) -> None:
        if is_held(self.state_dir, name):
            record.state, record.retry_at = "held", None
            log.info("service_held", process=name)
            return
        delay = next_delay(self.delays.get(name), up_for_s)
        self.delays[name] = delay
        self.due[name] = time.monotonic() + delay
        record.state, record.retry_at = "restarting", time.time() + delay


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m cli.supervisor STATE_DIR\n")
        return 2
    state_dir = Path(argv[0]).resolve()
    stack = StackFile.load(state_dir)
    if stack is None:
        log.error("no_stack", state_dir=str(state_dir))
        return 1
    with (state_dir / LOCK_FILE).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error("supervised_already", state_dir=str(state_dir))  # noqa: TRY400 - expected
            return 1
        Supervisor(state_dir, stack).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
