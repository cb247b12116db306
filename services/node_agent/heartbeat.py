"""The agent's first heartbeat, sent before anything heavy is imported.

A restarted agent (after a crash, a kill -9, an upgrade) says it is alive within a fraction of
a second, before its node could be declared lost: ``python -m services.node_agent`` calls
``first_beat`` with only this module's imports (redis-py, structlog) loaded, then imports the
agent. The running agent renews the same key (``NodeAgent._beat_once``). The node's fence
lease (``shim.lease``) is renewed with it, so the ranks a restarted agent adopts are not fenced.
"""

from __future__ import annotations

import time

import redis
import structlog

from events import keys
from services.core.client import connect_sync
from services.node_agent.settings import NodeAgentSettings
from services.node_agent.shim import lease

log = structlog.get_logger(__name__)


def first_beat(settings: NodeAgentSettings) -> None:
    """Set the node's heartbeat key once, synchronously; a failure is logged and left to the
    agent's own loop."""
    began = lease.now()
    try:
        with connect_sync(settings, timeout_s=2) as client:
            ttl_ms = int(settings.heartbeat_ttl_s * 1000)
            client.set(keys.heartbeat(settings.node), int(time.time() * 1000), px=ttl_ms)
    except (redis.RedisError, OSError) as exc:  # the agent's own loop retries
        log.warning("heartbeat.failed", error=repr(exc))
        if settings.fence_on_disconnect:
            return
        began = lease.now()  # alive, only cut off (see ``NodeAgent._beat_once``)
    # The ranks a restarted agent adopts keep running: the lease is renewed at once.
    settings.data_path.mkdir(parents=True, exist_ok=True)
    lease.renew(settings.lease_path, began)
