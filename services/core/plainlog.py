"""structlog's JSON lines from the standard library alone, for a process that must stay small.

The local stack's supervisor (``cli.supervisor``) starts processes and waits: it logs a few
lines a day. structlog would cost it about 8 MiB of memory (it imports asyncio, and asyncio
imports ssl and OpenSSL) for what ``json.dumps`` does. Its lines have the shape
``services.core.logging`` gives a service's: the event's fields, ``event``, ``service``,
``level`` and an ISO ``timestamp`` in UTC (``tests/unit/core/test_plainlog.py`` compares them).

Invariants:
- One JSON object per line on stderr, flushed at once, as structlog's ``PrintLogger`` does.
- Standard library only: ``tests/unit/test_imports.py`` checks that the supervisor loads neither
  structlog nor asyncio.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any


class Logger:
    """``log.info("event", key=value)``, as a structlog logger is called (info and above)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def _line(self, level: str, event: str, fields: dict[str, Any]) -> None:
        line = {
            **fields,
            "event": event,
            "service": self.service,
            "level": level,
            "timestamp": datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z"),
        }
        sys.stderr.write(json.dumps(line, default=repr) + "\n")
        sys.stderr.flush()

    def info(self, event: str, **fields: Any) -> None:
        self._line("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._line("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._line("error", event, fields)
