"""``python -m services.node_agent``: one node-agent, configured by ``RUNPLANE_*`` variables.

The heartbeat key is renewed before anything heavy is imported (``heartbeat``): a restarted
agent says it is alive within a fraction of a second, before its node could be declared lost.
"""

from __future__ import annotations

from services.core.imports import BROKER_UNUSED, hide_unused

hide_unused(*BROKER_UNUSED)  # first, before anything imports structlog or FastStream

import asyncio
import logging
import os
import sys

import structlog

from services.core.logging import configure
from services.core.settings import load
from services.node_agent.heartbeat import first_beat
from services.node_agent.settings import NodeAgentSettings


def main() -> int:
    configure("node-agent")
    settings = load(NodeAgentSettings, "node-agent")
    if settings.executor == "container":
        from services.node_agent.container.preflight import problem  # noqa: PLC0415

        if (why := problem(settings)) is not None:
            print(f"node-agent: {why}", file=sys.stderr)  # noqa: T201
            return 2
    elif settings.executor == "process" and os.geteuid() == 0:
        from services.node_agent.isolation import traversable  # noqa: PLC0415

        if (why := traversable(settings.homes_path)) is not None:
            print(f"node-agent: {why}", file=sys.stderr)  # noqa: T201
            return 2
    structlog.contextvars.bind_contextvars(node=settings.node)
    first_beat(settings)
    # The broker logs two lines per log entry, and an agent reads every entry of the log.
    logging.getLogger("runplane.faststream").setLevel(logging.WARNING)
    from services.node_agent.app import build_app  # noqa: PLC0415 - after the first beat

    asyncio.run(build_app(settings).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
