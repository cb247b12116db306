"""``python -m services.scheduler``: the scheduler process (settings from ``RUNPLANE_*``)."""

from __future__ import annotations

from services.core.imports import BROKER_UNUSED, hide_unused

hide_unused(*BROKER_UNUSED)  # first, before anything imports structlog or FastStream

import asyncio
import logging

from faststream import FastStream

from services.core.consumer import make_broker
from services.core.health import run_alive
from services.core.logging import configure
from services.core.settings import load
from services.scheduler.app import Scheduler
from services.scheduler.settings import SchedulerSettings


def main() -> None:
    settings = load(SchedulerSettings, "scheduler")
    configure("scheduler")
    # One line per consumed entry would drown the scheduler's own log: only trouble from there.
    logging.getLogger("runplane.faststream").setLevel(logging.WARNING)
    broker = make_broker(settings)
    scheduler = Scheduler(settings, broker)
    app = FastStream(
        broker,
        lifespan=scheduler.running,
        after_startup=[scheduler.broker_started.set],
    )
    asyncio.run(run_alive(app.run(), settings, service="scheduler"))


if __name__ == "__main__":
    main()
