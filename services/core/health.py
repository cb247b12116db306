"""Liveness of a service process, and the probe a container's health check runs.

``python -m services.core.health <service>`` exits 0 while the service's liveness key exists,
1 (with one line saying why) when it is missing or the log's server does not answer.

Invariants:
- A service's key (``events.keys.liveness``) is renewed by a task on the service's own event
  loop, with an expiry several renewals long: a process that died, or whose loop is stuck (a
  blocking call, a deadlock), lets it expire; a slow round trip does not.
- A node-agent is probed on the heartbeat key it already renews: the very key whose absence
  makes the scheduler declare its node lost, so "healthy" means what the scheduler sees.
- The probe runs where the service runs (a container's health check shares its hostname and
  its ``RUNPLANE_*`` environment), so both name the same key without being told.
- Liveness, not leadership: a standby scheduler or log-collector is healthy while another
  instance holds the lease.
- A clean stop drops the key at once, so a stopped service is not reported healthy until its
  key would have expired.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Coroutine
from typing import Any, NamedTuple

import structlog
from pydantic import Field, ValidationError
from redis.exceptions import RedisError

from events import keys
from services.core import metrics
from services.core.client import connect_sync, connect_with
from services.core.passwords import PasswordFileError, redacted
from services.core.settings import Settings, invalid

SERVICES = ("scheduler", "projector", "log-collector", "node-agent", "api")

LIVENESS_TTL_MS = 15_000
# Five renewals per expiry: a renewal lost to a slow server or a long pause does not expire it.
RENEW_EVERY_S = LIVENESS_TTL_MS / 1000 / 5
_ROUND_TRIP_S = 2.0

log = structlog.get_logger("services.core.health")


def instance_name() -> str:
    """This process's instance: its host (one container, one service instance)."""
    return socket.gethostname()


async def keep_alive(settings: Settings, service: str, instance: str | None = None) -> None:
    """Renew this process's liveness key until cancelled, then drop it.

    A failed renewal is logged and tried again at the next turn: the server being away for a
    moment is no reason to stop a service, and the key expiring then is the truth."""
    key = keys.liveness(service, instance or instance_name())
    client = connect_with(settings, max_connections=1)
    try:
        while True:
            try:
                async with asyncio.timeout(_ROUND_TRIP_S):
                    await client.set(key, "1", px=LIVENESS_TTL_MS)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("liveness.failed", key=key, error=repr(exc))
            await asyncio.sleep(RENEW_EVERY_S)
    finally:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(_ROUND_TRIP_S):
                await client.delete(key)
        await client.aclose()


async def run_alive(app: Coroutine[Any, Any, None], settings: Settings, *, service: str) -> None:
    """Run ``app`` (a service's main coroutine) while keeping its liveness key and serving its
    metrics (on ``metrics_port``, if set)."""
    beat = asyncio.create_task(keep_alive(settings, service), name=f"liveness:{service}")
    try:
        async with metrics.serving(settings.metrics_host, settings.metrics_port):
            await app
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


class ProbeSettings(Settings):
    """What the probe reads: the log's server and, for a node-agent, its node name, from the
    same ``RUNPLANE_NODE`` variable (and with the same default) as the agent itself."""

    node: str = Field(default_factory=socket.gethostname, min_length=1)


class Verdict(NamedTuple):
    healthy: bool
    line: str


def probed_key(service: str, settings: ProbeSettings, instance: str | None = None) -> str:
    if service == "node-agent":
        return keys.heartbeat(instance or settings.node)
    return keys.liveness(service, instance or instance_name())


def probe(settings: Settings, key: str, timeout_s: float = _ROUND_TRIP_S) -> Verdict:
    """Healthy while ``key`` exists on the log's server."""
    redis_url = settings.redis_url
    try:
        with connect_sync(settings, timeout_s) as client:
            ttl_ms = client.pttl(key)
    except PasswordFileError as exc:
        return Verdict(False, f"unhealthy: {exc}")
    except (RedisError, OSError) as exc:
        return Verdict(
            False,
            f"unhealthy: the log's server at {redacted(redis_url)} did not answer ({exc}); "
            "check RUNPLANE_REDIS_URL and that the server runs",
        )
    if ttl_ms == -2:  # no such key
        return Verdict(
            False,
            f"unhealthy: {key} is missing: the process is not running, or its event loop has "
            "not renewed the key within its expiry (see its log)",
        )
    return Verdict(True, f"healthy: {key} (expires in {ttl_ms} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.core.health",
        description="Exit 0 if the service running here is alive (its liveness or heartbeat "
        "key exists on the log's server), else 1. Settings from RUNPLANE_* variables.",
    )
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument(
        "--instance",
        help="the instance to probe (default: this host; for a node-agent, RUNPLANE_NODE)",
    )
    args = parser.parse_args(argv)
    try:
        settings = ProbeSettings()
    except ValidationError as exc:
        print(f"unhealthy: {invalid(exc)}", file=sys.stderr)  # noqa: T201
        return 2
    verdict = probe(settings, probed_key(args.service, settings, args.instance))
    print(verdict.line, file=sys.stdout if verdict.healthy else sys.stderr)
    return 0 if verdict.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
