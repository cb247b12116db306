"""``python -m services.node_agent``: one node-agent, configured by ``RUNPLANE_*`` variables.

The heartbeat key is renewed before anything heavy is imported: a restarted agent (after a
crash, a kill -9, an upgrade) says it is alive within a fraction of a second, before its node
could be declared lost.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import redis
import structlog

from events import keys
from services.core.logging import configure
from services.core.settings import load
from services.node_agent.settings import NodeAgentSettings


def main() -> int:
    configure("node-agent")
    settings = load(NodeAgentSettings, "node-agent")
    structlog.contextvars.bind_contextvars(node=settings.node)
    _first_beat(settings)
    # The broker logs two lines per log entry, and an agent reads every entry of the log.
    logging.getLogger("runplane.faststream").setLevel(logging.WARNING)
    from services.node_agent.app import build_app  # noqa: PLC0415 - after the first beat

    asyncio.run(build_app(settings).run())
    return 0


def _first_beat(settings: NodeAgentSettings) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        ttl_ms = int(settings.heartbeat_ttl_s * 1000)
        client.set(keys.heartbeat(settings.node), int(time.time() * 1000), px=ttl_ms)
    except (redis.RedisError, OSError) as exc:  # the agent's own loop retries
        structlog.get_logger(__name__).warning("heartbeat.failed", error=repr(exc))
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
