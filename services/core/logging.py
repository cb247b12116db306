"""structlog set up for services: one JSON object per line on stderr.

Context bound with ``structlog.contextvars.bound_contextvars(run=..., attempt=..., node=...)``
appears on every line logged inside it, so a run can be followed across services with grep.

A process whose terminal belongs to a user (``mcli``, the demo) runs library code too (it
folds a run's history): ``configure_aside`` sends those lines, the same JSON, to a file beside
the services' logs, never to stdout or stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import structlog


def configure(service: str, level: str = "INFO") -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level)
    structlog.configure(
        processors=[*_enrich(), structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    signal.signal(signal.SIGUSR1, _dump_tasks)


def configure_aside(path: Path, level: str = "WARNING") -> None:
    """Log lines (structlog's and the standard library's) appended to ``path`` as JSON, never
    to stdout or stderr: for a process whose terminal belongs to a user. Without ``path``'s
    folder, or if it cannot be written, a line is dropped (the user's command goes on)."""
    sink = _Appender(path)
    structlog.configure(
        processors=[*_enrich(), structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=True,
    )
    handler = _AppendHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=_enrich(),
        )
    )
    logging.basicConfig(handlers=[handler], level=level)


def _enrich() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


class _Appender:
    """A structlog logger that appends each line to a file, opened for that line: such a
    process logs rarely, so it holds no handle and makes no file until a line comes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError), self.path.open("a", encoding="utf-8") as file:
            file.write(message + "\n")

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _AppendHandler(logging.Handler):
    """The standard library's records, formatted, to an ``_Appender``."""

    def __init__(self, sink: _Appender) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - dropped: ``handleError`` would print it on stderr
            return
        self.sink.msg(line)


def _dump_tasks(signum: int, frame: FrameType | None) -> None:
    """``kill -USR1 <pid>``: every asyncio task and the chain of awaits it is suspended in,
    on stderr, to see what a quiet service is waiting for."""
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        tasks = set()
    structlog.get_logger("runplane").warning(
        "tasks.dump", tasks=len(tasks), stacks=[_awaiting(task) for task in tasks]
    )


def _awaiting(task: asyncio.Task[object]) -> str:
    lines = [repr(task)]
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return "\n".join(lines)
