"""structlog set up for services: one JSON object per line on stderr.

Context bound with ``structlog.contextvars.bound_contextvars(run=..., attempt=..., node=...)``
appears on every line logged inside it, so a run can be followed across services with grep.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import structlog


def configure(service: str, level: str = "INFO") -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    signal.signal(signal.SIGUSR1, _dump_tasks)


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
