"""Consumer groups on Redis streams, created at position 0.

A group that a consumer library creates by itself (FastStream does) starts at ``$`` and skips
everything written before it existed; every group runplane reads is created here first, at 0.
Free of FastStream: the projector and the log-collector's ingester read their groups with
plain redis-py and need not load the broker to create one.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError


async def ensure_group(client: Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` at position 0 unless it exists (the stream too)."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
