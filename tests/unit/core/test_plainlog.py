"""``services.core.plainlog``: the supervisor's lines have the shape of a service's structlog
lines (``services.core.logging.configure``): the same keys, the same values, one JSON object a
line. Each side runs in a fresh interpreter: structlog is configured once per process."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

_STRUCTLOG = """
import structlog
from services.core.logging import configure
configure("supervisor")
log = structlog.get_logger("cli.supervisor")
log.warning("service_exited", process="node-0", pid=7, up_for_s=0.5)
log.info("supervisor_started", adopted=["valkey"], path=object)
"""
_PLAIN = """
from services.core.plainlog import Logger
log = Logger("supervisor")
log.warning("service_exited", process="node-0", pid=7, up_for_s=0.5)
log.info("supervisor_started", adopted=["valkey"], path=object)
"""


def _lines(script: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    )
    assert done.stdout == ""
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_a_line_has_what_structlog_writes() -> None:
    structlog_lines, plain_lines = _lines(_STRUCTLOG), _lines(_PLAIN)
    assert len(plain_lines) == len(structlog_lines) == 2
    for plain, ours in zip(plain_lines, structlog_lines, strict=True):
        assert plain.keys() == ours.keys()
        stamps = [str(line.pop("timestamp")) for line in (plain, ours)]
        assert all(stamp.endswith("Z") for stamp in stamps)  # ISO, in UTC
        assert all(datetime.fromisoformat(stamp).utcoffset() == timedelta(0) for stamp in stamps)
        assert plain == ours
