"""The local stack on a Valkey Cluster (``mcli dev up --shards N --replicas R``): the
supervisor starts every node, forms the cluster before the services, starts again a node that
dies (which comes back into the cluster from its ``nodes.conf``), ``down`` stops every node,
and an ``up`` of the same shape brings the same cluster back with its data; ``mcli dev
status`` lists each node. The whole stack running on it needs the services' cluster clients."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import pytest
import redis
from redis.crc import key_slot

from cli.stack import LocalStack, StackConfig, StackError
from cli.stackfiles import operator_login
from services.core.passwords import read_password
from services.core.valkey import HOST, call
from services.core.valkey_cluster import ValkeyCluster
from tests.e2e.mcli_helpers import USER, Mcli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.e2e
SHARDS, REPLICAS = 3, 1
#: A row of ``mcli dev status``'s node table: name, address, role, shard, slots, keys.
_NODE_ROW = re.compile(
    r"^(valkey-\d+)\s+127\.0\.0\.1:(\d+)\s+(primary|replica)\s+(\d)\s+(\S+)\s+(\d+)"
)


def mcli(home: Path, stack: LocalStack) -> Mcli:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPLANE_REDIS_", "MCLI_"))}
    env |= {"RUNPLANE_HOME": str(home), "RUNPLANE_USER": USER, "TZ": "UTC", "COLUMNS": "200"}
    return Mcli(env=env, stack=stack)


def node_rows(out: str) -> dict[str, tuple[str, str, str, str]]:
    """``mcli dev status``'s node table: each node's role, shard, slots and keys."""
    return {
        m[1]: (m[3], m[4], m[5], m[6]) for line in out.splitlines() if (m := _NODE_ROW.match(line))
    }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A local stack's handle on a state directory of its own; whatever it started is brought
    down at the end (by ``LocalStack.down``: no run to stop first)."""
    stack = LocalStack(tmp_path / "home")
    try:
        yield stack
    finally:
        if LocalStack.find(stack.state_dir) is not None:
            stack.down()


def refusals(stack: LocalStack) -> list[str]:
    """What any node's ACL LOG says it refused a user of the stack (a command or key its rule
    lacks): one line each."""
    user, password_file = operator_login(stack.state_dir)
    found = []
    for port in cluster_of(stack).ports:
        with redis.Redis(
            host=HOST, port=port, username=user, password=read_password(password_file)
        ) as client:
            entries = cast(list[dict[str, Any]], client.acl_log(count=1000))
        found += [
            f"{port}: {e['username']}: no {e['reason']} {e['object']}"
            for e in entries
            if e["reason"] in ("command", "key", "channel")
        ]
    return found


def cluster_of(stack: LocalStack) -> ValkeyCluster:
    cluster = stack.valkey_cluster()
    assert cluster is not None
    return cluster


def test_the_supervisor_forms_the_cluster_restarts_a_dead_node_and_up_keeps_it(
    stack: LocalStack,
) -> None:
    home = stack.state_dir
    config = StackConfig(nodes=1, gpus_per_node=2, shards=SHARDS, replicas=REPLICAS)
    stack.up(config)
    cluster = cluster_of(stack)
    assert stack.servers == [f"valkey-{i}" for i in range(SHARDS * (1 + REPLICAS))]
    assert stack.url == cluster.url
    statuses = cluster.status()
    assert Counter(s.role for s in statuses) == {"primary": SHARDS, "replica": SHARDS * REPLICAS}
    operator = operator_login(home)
    shard = 1
    primary = cluster.primary(shard)
    first_slot = next(s.slots[0][0] for s in statuses if s.index == primary)
    key = f"rp:{{{_tag_for(first_slot)}}}:kept"
    assert call(cluster.ports[primary], operator, "SET", key, "before") == b"OK"
    assert call(cluster.ports[primary], operator, "WAIT", "1", "5000") == 1

    # kill -9 the shard's primary, held down: its replica takes over; started again, it
    # comes back as a replica.
    name = stack.servers[primary]
    stack.kill(name)
    cluster.wait_failed_over(shard, primary)
    stack.start(name)
    cluster.wait_ok()
    assert {s.index: s.role for s in cluster.status()}[primary] == "replica"

    # A node that dies unheld is started again by the supervisor, and rejoins.
    other = stack.servers[cluster.primary(0)]
    record = stack.records()[other]
    assert record.pid is not None
    os.kill(record.pid, signal.SIGKILL)
    _until_restarted(stack, other)
    cluster.wait_ok()

    status = mcli(home, stack).ok("dev", "status")
    rows = node_rows(status)
    assert sorted(rows) == stack.servers, status
    assert Counter(role for role, *_ in rows.values()) == {"primary": 3, "replica": 3}

    with pytest.raises(StackError, match="running"):
        LocalStack(home).up(config)
    refused = mcli(home, stack)("dev", "up", "--shards", "2")
    assert refused.returncode == 1
    shape = "a Valkey Cluster of 3 shards with 1 replica each"
    said = f"✗ Error 409: the local stack in {home} runs {shape}: `mcli dev down` first"
    assert refused.stderr.splitlines() == [f"{said} to start another"]
    nodes = [record.process for name, record in stack.records().items() if name in stack.servers]
    stack.down()
    assert LocalStack.find(home) is None
    assert [node for node in nodes if node is not None and node.alive()] == []

    with pytest.raises(StackError, match=f"--shards {SHARDS} --replicas {REPLICAS}"):
        LocalStack(home).up(StackConfig(nodes=1, gpus_per_node=2, shards=2))
    url = stack.url
    stack.up(config)
    assert stack.url == url  # the same nodes, on the same ports
    kept = cluster_of(stack)
    owner = next(s for s in kept.status() if s.role == "primary" and s.shard == shard)
    assert call(owner.port, operator, "GET", key) == b"before"  # from its AOF


def _tag_for(slot: int) -> str:
    """A hash tag whose keys land in ``slot``."""
    return next(f"t{i}" for i in range(1_000_000) if key_slot(f"t{i}".encode()) == slot)


def _until_restarted(stack: LocalStack, name: str) -> None:
    deadline = time.monotonic() + 60
    while (record := stack.records()[name]).restarts < 1 or record.running() is None:
        assert time.monotonic() < deadline, f"{name} was not started again"
        time.sleep(0.05)  # allowed: polling inside a deadline loop


def test_dev_up_runs_the_whole_stack_on_a_cluster_and_status_lists_every_node(
    stack: LocalStack,
) -> None:
    dev = mcli(stack.state_dir, stack)
    try:
        up = dev(
            "dev",
            "up",
            "--shards",
            "3",
            "--replicas",
            "1",
            "--nodes",
            "1",
            "--gpus-per-node",
            "2",
            timeout=180,
        )
        assert up.returncode == 0, up.stderr
        assert "a Valkey Cluster of 3 shards" in up.stdout
        rows = node_rows(dev.ok("dev", "status"))
        assert len(rows) == 6
        assert Counter(role for role, *_ in rows.values()) == {"primary": 3, "replica": 3}
        assert {shard for _, shard, *_ in rows.values()} == {"0", "1", "2"}
        name = dev.submit("hello")
        assert dev.ok("get", "runs").count(name) == 1
        running = LocalStack.find(stack.state_dir)
        assert running is not None
        assert refusals(running) == []
    finally:
        dev("dev", "down", timeout=120)
