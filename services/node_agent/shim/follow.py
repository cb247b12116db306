"""The shim's second half: following a started command to its end (see ``shim``).

Two reader threads split stdout and stderr into lines (``LineSplitter``) into one bounded
``LineBuffer`` (drops counted and marked); a sender thread appends them to the ingest stream in
batches of one pipeline each (``resp``). The main thread waits for the command; the shim's
signal handlers run there.

Invariants: a line is never lost silently when the server dies or restarts. A line counts as
sent only once its XADD's reply was read (with ``appendfsync always``, it is then on disk);
the lines of a batch the server did not acknowledge (the connection broke, or it answered a
transient error such as ``LOADING``) go back to the front of the buffer and are sent again,
in order, after a back-off, and only they (an acknowledged line sent twice would be stored
twice). While they wait, the buffer stays bounded: lines that do not fit are replaced by a
dropped-lines marker. A line the server refuses for good is counted and logged. The command's
group is killed once its leader exits (as a container's end does);
the readers get a bounded time to drain after that (a grandchild that left the group may hold
the pipes open); the remaining output gets a bounded time to reach the server. Neither wait
can keep the exit from being recorded. A signal is reported as a signal, never as an exit code.

Standard library only: this runs once per rank (see ``resp`` for why).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from events import keys
from services.node_agent.errors import RespError
from services.node_agent.shim import lease
from services.node_agent.shim.buffer import Entry, LineBuffer
from services.node_agent.shim.entries import STDERR, STDOUT, Entries
from services.node_agent.shim.lines import LineSplitter
from services.node_agent.shim.resp import Client

if TYPE_CHECKING:
    from services.node_agent.shim.supervisor import Supervisor

_READERS_AFTER_EXIT_S = 5.0
_FLUSH_S = 30.0
_MAX_BYTES = 64 * 1024 * 1024
_BATCH = 1000


def log(event: str, level: str = "info", **fields: Any) -> None:
    """One JSON line on stderr (the rank's ``shim.log``), shaped like the services' logs."""
    fields.update(
        event=event,
        service="node-agent-shim",
        level=level,
        timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    )
    print(json.dumps(fields), file=sys.stderr, flush=True)  # noqa: T201


class ShimPump:
    def __init__(
        self,
        client: Client,
        run_id: str,
        attempt: int,
        rank: int,
        max_lines: int,
        *,
        replicas: int = 0,
        replica_timeout_ms: int = 2000,
    ):
        self.client = client
        #: Replicas that must hold a line before it counts as sent (``RUNPLANE_APPEND_REPLICAS``).
        self.replicas = replicas
        self.replica_timeout_ms = replica_timeout_ms
        self.stream = keys.log_ingest().encode()
        entries = Entries(run_id, attempt, rank)
        self.buffer = LineBuffer(
            entries.line, entries.dropped, max_lines=max_lines, max_bytes=_MAX_BYTES
        )
        self.sent = 0
        self.lost = 0
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._sender = threading.Thread(target=self._send_all, name="sender", daemon=True)

    def start(self) -> None:
        self._sender.start()

    def pipe(self, fd: int, source: bytes, max_line: int) -> None:
        """Read ``fd`` to its end, line by line, into the buffer."""
        splitter = LineSplitter(max_line)
        while chunk := os.read(fd, 256 * 1024):
            lines = splitter.feed(chunk)
            with self._cond:
                for line, cut in lines:
                    self.buffer.put(source, line, cut)
                self._cond.notify()
        last = splitter.close()
        if last is not None:
            with self._cond:
                self.buffer.put(source, *last)
                self._cond.notify()

    def close(self, within: float) -> None:
        """Send what is buffered, for at most ``within`` seconds."""
        with self._cond:
            self.buffer.finish()
            self._closing = True
            self._deadline = time.monotonic() + within
            self._cond.notify()
        self._sender.join(within + 1)
        self.lost += len(self.buffer)
        if self.lost:
            log("shim.output_lost", "error", lines=self.lost)

    def _send_all(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                while not self.buffer and not self._closing:
                    self._cond.wait()
                if not self.buffer:
                    return
                batch = self.buffer.take(_BATCH)
            retry, why = self._send(batch)
            if not retry:
                backoff = 0.05
                continue
            with self._cond:
                self.buffer.give_back(retry)  # only what the server did not acknowledge
            if time.monotonic() + backoff > self._deadline:
                return
            log("shim.output_retry", "warning", lines=len(retry), error=why, retry_in=backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _send(self, batch: list[Entry]) -> tuple[list[Entry], str]:
        """Send one batch; the entries to send again (in order), and why."""
        commands: list[list[bytes | int]] = [
            [b"XADD", self.stream, b"*", *_flat(entry)] for entry in batch
        ]
        if self.replicas:
            commands.append(self._wait)
        replies: list[object] = []
        why = ""
        try:
            self.client.send(commands, replies)
        except OSError as exc:  # the replies read so far were acknowledged; the rest were not
            why = repr(exc)
        if self.replicas and not self._replicated(replies[len(batch) :]):
            # Stored on the primary only, and the connection that could tell is gone: send
            # them again (a line may then be stored twice, never lost with a primary).
            return batch, why or "the lines did not reach a replica"
        replies = replies[: len(batch)]
        retry: list[Entry] = []
        refused: list[str] = []
        for entry, reply in zip(batch, replies, strict=False):
            if not isinstance(reply, RespError):
                self.sent += 1
            elif reply.transient:  # not carried out: the server cannot take it now
                retry.append(entry)
                why = why or str(reply)
            else:
                refused.append(str(reply))
        retry += batch[len(replies) :]
        if refused:  # permanent: say so, and go on with the next lines
            log("shim.output_refused", "error", lines=len(refused), error=refused[0])
            self.lost += len(refused)
        return retry, why

    @property
    def _wait(self) -> list[bytes | int]:
        return [b"WAIT", self.replicas, self.replica_timeout_ms]

    def _replicated(self, waited: list[object]) -> bool:
        """Whether ``replicas`` replicas hold what this connection wrote: WAIT's reply, or WAIT
        again on the same connection until they do, the connection breaks, or ``close``'s
        deadline passes (a replica away for a while delays lines, never doubles them)."""
        count = waited[0] if waited else None
        while not (isinstance(count, int) and count >= self.replicas):
            if count is None or (isinstance(count, RespError) and not count.transient):
                return False  # no reply (the connection broke), or WAIT refused
            if time.monotonic() > self._deadline:
                return False
            log("shim.output_unreplicated", "warning", replicas=count, wanted=self.replicas)
            again: list[object] = []
            try:
                self.client.send([self._wait], again)
            except OSError:
                return False
            count = again[0] if again else None
        return True


def _flat(entry: dict[bytes, bytes]) -> list[bytes]:
    return [part for field in entry.items() for part in field]


def _fence_watch(supervisor: Supervisor, spec: dict[str, Any]) -> threading.Event | None:
    """Watch the node's lease until the returned event is set; fence the command once the
    lease is older than the fence timeout. None when the spec names no lease (a shim started
    by an agent that did not fence)."""
    path, timeout_s = spec.get("lease_file"), spec.get("fence_timeout_s")
    if path is None or timeout_s is None:
        return None
    done = threading.Event()
    poll_s = float(spec["fence_poll_s"])

    def watch() -> None:
        while not done.wait(poll_s):
            if lease.expired(Path(path), float(timeout_s), lease.now()):
                log("shim.fenced", "warning", lease=lease.renewed_at(Path(path)), at=lease.now())
                supervisor.fence()
                return

    threading.Thread(target=watch, name="fence", daemon=True).start()
    return done


def follow(supervisor: Supervisor, spec: dict[str, Any]) -> dict[str, Any]:
    """Follow the started command to its end; the exit status, as ``exit.json`` holds it."""
    proc = supervisor.proc
    assert proc is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    log("shim.started", pid=proc.pid)
    client = Client(
        spec["redis_url"],
        username=spec.get("redis_username"),
        password_file=spec.get("redis_password_file"),
    )
    pump = ShimPump(
        client,
        spec["run_id"],
        spec["attempt"],
        spec["rank"],
        spec["max_lines"],
        replicas=spec.get("replicas", 0),
        replica_timeout_ms=spec.get("replica_timeout_ms", 2000),
    )
    pump.start()
    readers = [
        threading.Thread(target=pump.pipe, args=(pipe.fileno(), source, spec["max_line"]))
        for pipe, source in ((proc.stdout, STDOUT), (proc.stderr, STDERR))
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()
    fence = _fence_watch(supervisor, spec)
    returncode = proc.wait()  # the signal handlers run here, in the main thread
    supervisor.ended()
    if fence is not None:
        fence.set()
    supervisor.end_leftovers()  # what the command left behind ends with it
    until = time.monotonic() + _READERS_AFTER_EXIT_S
    for reader in readers:
        reader.join(max(0.0, until - time.monotonic()))
    if any(reader.is_alive() for reader in readers):
        log("shim.output_left_open", "warning", why="a process outside the group holds it")
    pump.close(_FLUSH_S)
    client.close()
    status: dict[str, Any] = {
        "exit_code": returncode if returncode >= 0 else None,
        "signal": -returncode if returncode < 0 else None,
        "stopped": supervisor.stopped,
        "fenced": supervisor.fenced,
        "lines": pump.sent,
        "dropped": pump.buffer.dropped,
    }
    log("shim.exited", **status)
    return status
