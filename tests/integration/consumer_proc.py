"""A consumer process that takes entries and never acknowledges them: killed in the middle of
its effect. ``python -m tests.integration.consumer_proc REDIS_URL GROUP CONSUMER``."""

from __future__ import annotations

import asyncio
import sys

from events.codec import Recorded
from services.core.client import connect
from services.core.consumer import LogConsumer, make_broker
from services.core.settings import Settings


async def main(url: str, group: str, consumer: str) -> None:
    client = connect(url)
    broker = make_broker(Settings(redis_url=url))
    forever = asyncio.Event()

    async def stuck(recorded: Recorded) -> None:
        await client.rpush(f"taken:{consumer}", recorded.position)
        await forever.wait()  # the effect never finishes: the entry is never acknowledged

    log_consumer = LogConsumer(
        broker, group=group, consumer=consumer, handler=stuck, settings=Settings(redis_url=url)
    )
    await log_consumer.prepare(client)
    await broker.start()
    await forever.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
