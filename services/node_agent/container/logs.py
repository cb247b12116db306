"""A rank's output, from its container's log to the log-collector's ingest stream.

``podman logs --follow --timestamps`` writes the container's stdout lines to its stdout and its
stderr lines to its stderr, each after the time the monitor read it; both go to the rank's
``OutputPump`` (the same pump, buffer and ingest entries as every executor's), each line filed
under its own stream.

Where each stream stands is the stamp of its last line sent and how many lines sent carry that
very stamp (the monitor stamps the lines of one read alike). A follow that breaks is started
again from that point (``--since``, whole seconds; the rest is filtered here). It is recorded on
disk (``RankFiles.sent``) each time the pump has sent every line put (``on_settled``): a rank
adopted after a restart goes on from the last record, so no line is sent twice and none is
skipped, unless the agent died in the instant between a send and its record.
The follower ends when a follow ends and ``ended()`` says the container is over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from services.node_agent.container.engine import Engine, EngineError
from services.node_agent.container.rankdir import RankFiles
from services.node_agent.pump import OutputPump
from services.node_agent.shim.lines import LineSplitter
from services.node_agent.stamps import Position, Skip, split_stamp
from services.output import ingest

log = structlog.get_logger(__name__)

_STAMP_MAX = 40  # "2025-05-14T09:14:09.123456789Z " and then some
_RETRY_S = 1.0
STREAMS = {"stdout": ingest.STDOUT, "stderr": ingest.STDERR}


class Follower:
    def __init__(
        self,
        engine: Engine,
        name: str,
        pump: OutputPump,
        files: RankFiles,
        ended: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.name = name
        self.pump = pump
        self.files = files
        self.ended = ended
        recorded = files.record().sent_until
        self.positions = {name: Position(recorded.get(name)) for name in STREAMS}
        self.lines = 0
        self._recorded = {name: str(p) for name, p in self.positions.items() if p.stamp}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"logs:{self.name}")

    async def drain(self, within: float) -> None:
        """Let the follower read the ended container's last lines, for at most ``within`` s."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(self._task)
        except TimeoutError:
            log.warning("logs.drain_timeout", container=self.name)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except EngineError as exc:
                log.info("logs.broken", container=self.name, why=str(exc))
            except Exception:  # a follower must not die silently: say so, the rank goes on
                log.exception("logs.failed", container=self.name)
                return
            if self.ended():
                return
            await asyncio.sleep(_RETRY_S)  # the follow broke while the container runs

    async def _follow(self) -> None:
        since = self._since()
        command = ["logs", "--follow", "--timestamps", *since, self.name]
        proc = await self.engine.spawn(*command)
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            await asyncio.gather(
                self._pipe(proc.stdout, "stdout"), self._pipe(proc.stderr, "stderr")
            )
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    async def _pipe(self, stream: asyncio.StreamReader, name: str) -> None:
        source = STREAMS[name]
        position = self.positions[name]
        # Sent before the follow broke, or before the agent restarted: read again, not sent.
        skip = Skip(position.stamp, position.count if position.stamp else 0)
        splitter = LineSplitter(ingest.MAX_LINE + _STAMP_MAX)
        while chunk := await stream.read(256 * 1024):
            for line, cut in splitter.feed(chunk):
                self._line(position, skip, source, line, cut)
            await asyncio.sleep(0)  # a log with data always ready must let the pump send
        final = splitter.close()
        if final is not None:
            self._line(position, skip, source, *final)

    def _line(self, position: Position, skip: Skip, source: bytes, line: bytes, cut: int) -> None:
        stamp, text, rest = split_stamp(line)
        if stamp is not None:
            if skip.sent_before(stamp):
                return
            position.sent(stamp, text)
        self.pump.put(source, rest, cut)
        self.lines += 1

    def record(self) -> None:
        """Record where each stream stands: call it when every line put was sent."""
        for name, position in self.positions.items():
            now = str(position)
            if position.stamp is not None and self._recorded.get(name) != now:
                self.files.sent(name, now)
                self._recorded[name] = now

    def _since(self) -> list[str]:
        """``--since`` with the earliest stamp recorded (whole seconds): lines of that second
        on are read again, and filtered here."""
        stamps = [p.stamp for p in self.positions.values() if p.stamp is not None]
        if len(stamps) < len(STREAMS):
            return []  # a stream with nothing sent yet is read from its start
        return ["--since", f"{min(stamps)[0]}Z"]
