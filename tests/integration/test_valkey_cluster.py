"""A local Valkey Cluster (``services.core.valkey_cluster``) as the ``valkey_cluster`` fixture
forms it: every slot covered, each primary with a replica logged in as the replication user; a
service's user reads and writes keys of every shard through redis-py's cluster client, and the
server refuses it nothing (``ACL LOG``); the default user is refused; a primary killed (-9) is
failed over to its replica, keeps the writes its replica acknowledged, and comes back as a
replica once started again."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from events import keys
from services.core import acl
from services.core.client import _CancelSafeWrite, connect_with
from services.core.settings import Settings
from services.core.valkey import HOST, ReplyError, call
from services.core.valkey_cluster import SLOTS, cluster_info
from tests.clusters import REPLICAS, SHARDS, start_cluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.clusters import LocalCluster


def client_as(cluster: LocalCluster, user: str) -> RedisCluster:
    return RedisCluster(
        host=HOST,
        port=cluster.nodes[0].port,
        username=user,
        password=cluster.password(user),
    )


@pytest.fixture
async def api(valkey_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = client_as(valkey_cluster, acl.API)
    try:
        yield client
    finally:
        await client.aclose()


async def ids(client: RedisCluster, key: str) -> list[bytes]:
    """The ids of the entries of stream ``key``, in order."""
    return [cast(bytes, entry_id) for entry_id, _ in await client.xrange(key) or []]


def one_key_per_shard(cluster: LocalCluster) -> dict[int, str]:
    """A run's history key held by each shard (its partition chosen so)."""
    found: dict[int, str] = {}
    statuses = [s for s in cluster.cluster.status() if s.role == "primary"]
    for partition in range(64):
        key = keys.aggregate_stream("run:r1", partition)
        slot = key_slot(key.encode())
        shard = next(s.shard for s in statuses if any(a <= slot <= b for a, b in s.slots))
        assert shard is not None
        found.setdefault(shard, key)
    assert sorted(found) == list(range(SHARDS))
    return found


def refused(cluster: LocalCluster, user: str) -> list[str]:
    """What each node's ACL LOG says it refused ``user``."""
    lines = []
    for node in cluster.nodes:
        password = cluster.password(acl.OPERATOR)
        with redis.Redis(
            host=HOST, port=node.port, username=acl.OPERATOR, password=password
        ) as client:
            entries = cast(list[dict[str, Any]], client.acl_log(count=1000))
        lines += [
            f"{node.port}: no {e['reason']} {e['object']}" for e in entries if e["username"] == user
        ]
    return lines


def test_every_slot_is_covered_and_each_primary_has_a_replica(
    valkey_cluster: LocalCluster,
) -> None:
    statuses = valkey_cluster.cluster.status()
    assert Counter(s.role for s in statuses) == {"primary": SHARDS, "replica": SHARDS * REPLICAS}
    assert Counter(s.shard for s in statuses) == dict.fromkeys(range(SHARDS), 1 + REPLICAS)
    covered = sorted(r for s in statuses if s.role == "primary" for r in s.slots)
    assert covered[0][0] == 0
    assert covered[-1][1] == SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))
    for node in valkey_cluster.nodes:
        found = cluster_info(node.port, valkey_cluster.operator)
        assert found["cluster_state"] == "ok"
        assert found["cluster_slots_ok"] == str(SLOTS)
    assert refused(valkey_cluster, acl.REPLICATION) == []  # each replica logged in


def test_a_one_shard_cluster_has_its_replica(tmp_path: Path) -> None:
    """Formed before the replica's handshake with the primary ends (as soon as it is met), a
    1-shard cluster once left its replica a primary without slots."""
    one = start_cluster(tmp_path, shards=1, replicas=1)
    try:
        statuses = one.cluster.status()
    finally:
        one.cluster.stop()
    assert [(s.role, s.shard) for s in statuses] == [("primary", 0), ("replica", 0)]


async def test_a_service_reads_and_writes_every_shard_through_a_cluster_client(
    valkey_cluster: LocalCluster, api: RedisCluster
) -> None:
    written = {}
    for shard, key in one_key_per_shard(valkey_cluster).items():
        written[key] = await api.xadd(key, {"shard": str(shard)})
    for key, entry in written.items():
        assert (await ids(api, key))[-1] == entry
    assert refused(valkey_cluster, acl.API) == []  # CLUSTER SLOTS, COMMAND: none refused


async def test_the_default_user_is_refused(valkey_cluster: LocalCluster) -> None:
    for node in valkey_cluster.nodes:
        with pytest.raises(ReplyError, match="NOAUTH"):
            call(node.port, None, "PING")
    client = RedisCluster(host=HOST, port=valkey_cluster.nodes[0].port)
    try:
        with pytest.raises((RedisError, RedisClusterException)):
            await client.initialize()
    finally:
        await client.aclose()


async def test_a_primary_killed_fails_over_and_comes_back_as_a_replica(
    valkey_cluster: LocalCluster, api: RedisCluster
) -> None:
    cluster = valkey_cluster.cluster
    key = one_key_per_shard(valkey_cluster)[1]
    entry = await api.xadd(key, {"before": "kill"})
    # WAIT as the operator on the primary: the replica holds the entry before the kill.
    primary = cluster.nodes[cluster.primary(1)]
    assert call(primary.port, valkey_cluster.operator, "WAIT", "1", "5000") == 1

    killed = cluster.kill_primary(1)

    assert cluster.primary(1) != killed
    assert (await ids(api, key))[-1] == entry  # the client follows the slots
    after = await api.xadd(key, {"after": "kill"})
    cluster.restart_node(killed)
    statuses = {s.index: s for s in cluster.status()}
    assert statuses[killed].role == "replica"
    assert statuses[killed].shard == 1
    assert statuses[killed].keys == statuses[cluster.primary(1)].keys
    assert (await ids(api, key))[-2:] == [entry, after]


async def test_the_services_cluster_client_writes_cancel_safely_on_every_node(
    valkey_cluster: LocalCluster,
) -> None:
    """``connect_with`` on a cluster: a client of every shard, whose every connection (on
    each node it found) is the cancel-safe one of ``services.core.client``."""
    settings = Settings(
        redis_url=valkey_cluster.url,
        redis_cluster=True,
        redis_username=acl.API,
        redis_password_file=valkey_cluster.login(acl.API)[1],
    )
    client = cast(Any, connect_with(settings))
    try:
        for shard, key in one_key_per_shard(valkey_cluster).items():
            await client.xadd(key, {"shard": str(shard)})
        primaries = client.get_primaries()
        assert len(primaries) == SHARDS
        for node in primaries:
            assert node.connection_class is client.connection_kwargs["connection_class"]
            assert node._connections, node.name  # used: the set above went to each
            assert all(isinstance(c, _CancelSafeWrite) for c in node._connections)
    finally:
        await client.aclose()
