"""Clients of the log's server: one Valkey (or Redis) server, or a Valkey Cluster.

Invariants:
- Every client of a service comes from here (``connect_with``, ``connect_sync``), logged in as
  the service's own user (``services.core.acl``), never with a password on a command line.
- A client waits for a free connection rather than failing, and retries a command on a new
  connection when the server dropped the old one: every command runplane sends may run twice
  (reads, and appends with their idempotency key).
- On a cluster (``Settings.redis_cluster``) the same commands go to the primary of their key's
  slot; failovers and slot moves are followed. Code that needs to know (a pool, WAIT's
  connection) asks ``is_cluster``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any, cast
from weakref import WeakKeyDictionary

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.core.settings import Auth, Settings, login


class _CancelSafeWrite(aioredis.connection.AbstractConnection):
    """redis-py bounds a write with ``asyncio.wait_for``, which on Python 3.11 swallows a
    cancellation that arrives as the write completes (gh-86296; see ``services.core.aio``). A
    reader loop cancelled at that instant carried on forever, and whoever awaited its end hung.
    Here the write is bounded by ``asyncio.timeout``, which lets the cancellation through."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        timeout = self.socket_timeout
        if sys.version_info >= (3, 12) or not timeout:
            return await super().send_packed_command(command, check_health)
        self.socket_timeout = None  # no wait_for inside; the timeout below bounds it all
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


class _HiredisPack(aioredis.connection.AbstractConnection):
    """redis-py encodes every argument in Python before hiredis packs the command (a function
    call and its type checks each, ~10 % of the scheduler's CPU in its appends' arguments,
    bench.scale), though hiredis takes str, bytes, int and float itself, alike. Here hiredis
    packs what it takes; anything else (a bool, a memoryview, a command name holding a space
    or given as bytes) goes redis-py's way, with its errors."""

    def pack_command(self, *args: Any) -> list[bytes]:
        try:
            if " " not in args[0]:
                return [hiredis.pack_command(args)]
        except TypeError:
            pass
        return super().pack_command(*args)


class _Connection(_HiredisPack, _CancelSafeWrite, aioredis.Connection):
    pass


class _SSLConnection(_HiredisPack, _CancelSafeWrite, aioredis.SSLConnection):
    pass


class _UnixConnection(_HiredisPack, _CancelSafeWrite, aioredis.UnixDomainSocketConnection):
    pass


def connection_class(url: str) -> type[aioredis.connection.AbstractConnection]:
    """The connection class for ``url``'s scheme, with the cancel-safe write."""
    scheme = url.partition("://")[0]
    return {"rediss": _SSLConnection, "unix": _UnixConnection}.get(scheme, _Connection)


def connect(url: str, max_connections: int = 64, *, auth: Auth | None = None) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of failing past its size, and
    that retries a command on a new connection when the server dropped the old one (every
    command runnable twice: reads, and appends with their idempotency key). It logs in as
    ``auth`` when given (else as the URL says)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        **login(auth),
        connection_class=connection_class(url),
        max_connections=max_connections,
        timeout=30,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)


def connect_cluster(url: str, max_connections: int = 64, *, auth: Auth | None = None) -> Any:
    """A client of the Valkey Cluster that ``url`` names one node of: it finds the others,
    sends each command to the primary of its key's slot, and follows failovers and slot moves
    (MOVED, ASK) by asking the cluster again. A command the cluster could not take (a primary
    killed, its replica not yet promoted) is retried with back-off like ``connect``'s.

    Typed as ``Any`` where it is passed as a ``Redis``: the cluster client answers the same
    commands; what differs (a pool, WAIT's connection) is asked through ``is_cluster``."""
    client: Any = RedisCluster.from_url(
        url,
        **login(auth),
        # Per node; past it a command fails rather than waits: keep it well above what one
        # process runs at once (the API's streams, the scheduler's concurrent appends).
        max_connections=max(max_connections, 1024),
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=10),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    # The cluster client takes no connection class: the cancel-safe one (``_CancelSafeWrite``)
    # goes where it builds its nodes (the startup node, and every node it finds later).
    connection = connection_class(url)
    client.connection_kwargs["connection_class"] = connection
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = connection
    client.runplane_origin = (url, max_connections, auth)  # for ``raw_ranges``
    return client


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


async def disconnect(client: aioredis.Redis) -> None:
    """Drop every pooled connection of ``client`` (after a server restart they are all stale);
    the next command opens a new one (on a cluster, asking it its nodes again)."""
    if is_cluster(client):
        for node in cast(Any, client).get_nodes():
            await node.disconnect()
    else:
        await client.connection_pool.disconnect()


def connect_with(settings: Settings, max_connections: int = 64) -> aioredis.Redis:
    """``connect`` (or ``connect_cluster``) to the server ``settings`` name, as their user,
    its writes waiting for the replicas they name (``wait_after``)."""
    client: aioredis.Redis = (
        connect_cluster(settings.redis_url, max_connections, auth=settings.redis_auth())
        if settings.redis_cluster
        else connect(settings.redis_url, max_connections, auth=settings.redis_auth())
    )
    replicate(client, settings.append_replicas, settings.append_replica_timeout_ms)
    return client


def connect_sync(settings: Settings, timeout_s: float) -> redis.Redis:
    """A blocking client of the server ``settings`` name (a cluster too), as their user, whose
    every round trip gives up after ``timeout_s``: for a probe or a first heartbeat. A cluster
    that cannot be reached raises ``redis.ConnectionError`` here already."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        **login(settings.redis_auth()),
    }
    if settings.redis_cluster:
        try:  # a cluster client asks the cluster its nodes at once
            cluster: Any = redis.RedisCluster.from_url(settings.redis_url, **options)
        except RedisClusterException as exc:
            raise RedisConnectionError(str(exc)) from exc
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(settings.redis_url, **options)


def raw_ranges(client: aioredis.Redis) -> aioredis.Redis:
    """A client on ``client``'s connections whose XRANGE replies are the server's arrays
    (``[[id, [field, value, ...]], ...]``), without redis-py's tuple and dict per entry (half
    the cost of a read). A cluster client keeps its callbacks in one table for every node:
    there, one second client on the same nodes, kept with the first (closed by its owner)."""
    if not is_cluster(client):
        raw = aioredis.Redis(connection_pool=client.connection_pool)
        raw.set_response_callback("XRANGE", _as_sent)
        return raw
    cluster = cast(Any, client)
    if getattr(cluster, "runplane_raw", None) is None:
        url, max_connections, auth = cluster.runplane_origin
        cluster.runplane_raw = connect_cluster(url, max_connections, auth=auth)
        cluster.runplane_raw.set_response_callback("XRANGE", _as_sent)
    found: aioredis.Redis = cluster.runplane_raw
    return found


def _as_sent(response: Any, **_: Any) -> Any:
    return response


# --- replicas -------------------------------------------------------------------------------


class NotReplicated(RedisError):
    """Writes are on their primary but not yet on the replicas they must reach
    (``RUNPLANE_APPEND_REPLICAS``): not acknowledged. Whoever retries writes them again (an
    append with its idempotency key, output lines by their ids or at least once)."""

    def __init__(self, wanted: int, got: object) -> None:
        super().__init__(f"the writes reached {got} replicas of the {wanted} they wait for")


_REPLICAS: WeakKeyDictionary[object, tuple[int, int]] = WeakKeyDictionary()


def replicate(client: object, replicas: int, timeout_ms: int) -> None:
    """Make the writes ``client`` sends through ``wait_after`` wait for ``replicas`` replicas,
    ``timeout_ms`` at most each time (``connect_with`` does, from the settings)."""
    if replicas:
        _REPLICAS[client] = (replicas, timeout_ms)
    else:
        _REPLICAS.pop(client, None)


def replicas_of(client: object) -> int:
    """How many replicas the writes of ``client`` wait for (``replicate``)."""
    return _REPLICAS.get(client, (0, 0))[0]


async def wait_after(pipe: Any, client: object, written: Iterable[str]) -> int:
    """Queue on ``pipe``, after what it holds, a WAIT for the replicas ``client`` waits for
    (``replicate``) on each connection that sent writes to the keys ``written``: one per
    server (on a cluster, per primary of their slots; WAIT names no key). How many WAITs were
    queued: their replies end ``pipe``'s, for ``check_replicated``."""
    wanted, timeout_ms = _REPLICAS.get(client, (0, 0))
    if not wanted:
        return 0
    if not is_cluster(client):
        pipe.execute_command("WAIT", wanted, timeout_ms)
        return 1
    cluster = cast(Any, client)
    await cluster.initialize()  # its slots known (at once when they are)
    nodes = {cluster.get_node_from_key(key).name: cluster.get_node_from_key(key) for key in written}
    for node in nodes.values():
        pipe.execute_command("WAIT", wanted, timeout_ms, target_nodes=node)
    return len(nodes)


def check_replicated(client: object, waited: Iterable[object]) -> None:
    """Raise ``NotReplicated`` unless every WAIT reply in ``waited`` (``wait_after``'s) says
    enough replicas hold the writes before it."""
    wanted, _ = _REPLICAS.get(client, (0, 0))
    for got in waited:
        if isinstance(got, Exception) or not isinstance(got, int) or got < wanted:
            raise NotReplicated(wanted, got)
