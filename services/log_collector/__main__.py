"""``python -m services.log_collector``: run the log-collector (settings from RUNPLANE_*)."""

from __future__ import annotations

from services.core.imports import BROKER_UNUSED, hide_unused, lean_arrow

hide_unused(*BROKER_UNUSED)  # first, before anything imports structlog or FastStream
lean_arrow()  # before anything imports pyarrow

import asyncio
import logging

from services.core.health import run_alive
from services.core.logging import configure
from services.core.settings import load
from services.log_collector.app import Collector
from services.log_collector.settings import LogCollectorSettings


def main() -> None:
    configure("log-collector")
    # FastStream logs every message handled ("Received", "Processed"): far too much here.
    logging.getLogger("runplane.faststream").setLevel(logging.WARNING)
    settings = load(LogCollectorSettings, "log-collector")
    app = Collector(settings).app()
    asyncio.run(run_alive(app.run(), settings, service="log-collector"))


if __name__ == "__main__":
    main()
