"""structlog set up for services: one JSON object per line on stderr.

Context bound with ``structlog.contextvars.bound_contextvars(run=..., attempt=..., node=...)``
appears on every line logged inside it, so a run can be followed across services with grep.
"""

from __future__ import annotations

import logging
import sys

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
