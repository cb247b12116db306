"""The server's ACL rules (``services.core.acl``), read as the server reads them: what each user
may run and which keys it may read or write. The server's own verdicts are in
``tests/integration/test_passwords.py`` and ``tests/e2e/test_acl.py``."""

from __future__ import annotations

import fnmatch
import hashlib

import pytest

from events import keys
from services.core import acl

#: Never a service's: the server's administration, and the commands that read every key.
FORBIDDEN = {
    "acl",
    "config",
    "debug",
    "flushall",
    "flushdb",
    "shutdown",
    "keys",
    "monitor",
    "module",
    "save",
    "bgsave",
    "bgrewriteaof",
    "replicaof",
    "slaveof",
    "failover",
    "cluster",
    "migrate",
    "restore",
    "function|delete",
    "function|flush",
    "function|restore",
    "script|flush",
    "client|kill",
    "subscribe",
    "psubscribe",
    "publish",
}


def may(user: str, key: str, access: str) -> bool:
    """Whether ``user``'s rule lets it ``read`` or ``write`` ``key`` (glob, as the server)."""
    rule = acl.RULES[user]
    patterns = (*rule.both, *(rule.reads if access == "read" else rule.writes))
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


@pytest.mark.parametrize("user", acl.SERVICES)
def test_no_service_runs_an_administrative_command_or_a_category(user: str) -> None:
    commands = set(acl.RULES[user].commands)
    assert not commands & FORBIDDEN
    assert not any(command.startswith("@") for command in commands)
    assert not any(pattern in ("*", "") for pattern in _patterns(user))


@pytest.mark.parametrize("user", acl.SERVICES)
def test_every_key_pattern_is_one_of_runplanes(user: str) -> None:
    assert all(pattern.startswith(f"{keys.PREFIX}:") for pattern in _patterns(user))


def test_only_the_scheduler_and_the_projector_load_functions() -> None:
    loaders = {user for user in acl.SERVICES if "function|load" in acl.RULES[user].commands}
    assert loaders == {acl.SCHEDULER, acl.PROJECTOR}
    assert [u for u in acl.USERS if acl.loads_append_function(u)] == [acl.SCHEDULER, acl.OPERATOR]


def test_each_service_touches_only_its_own_keys() -> None:
    run = keys.aggregate_stream("run:r1", 0)
    user_history = keys.aggregate_stream("user:alice", 0)
    projection = keys.projection_rows("run_status", "v2", "runs")
    output = keys.rank_log("r1", 0, 0)
    assert may(acl.NODE_AGENT, run, "write")
    assert not may(acl.NODE_AGENT, user_history, "write")  # no user or key of its own making
    assert not may(acl.NODE_AGENT, projection, "write")
    assert not may(acl.NODE_AGENT, keys.projector_lease(), "write")
    assert not may(acl.NODE_AGENT, keys.scheduler_lease(0), "write")
    assert not may(acl.NODE_AGENT, keys.run_name("hello-abcdef"), "write")
    assert may(acl.NODE_AGENT, keys.log_ingest(), "write")
    assert not may(acl.NODE_AGENT, keys.log_ingest(), "read")  # its ranks' output, write-only
    # The archiver's: it trims the log and retires runs' histories the archive holds.
    assert may(acl.LOG_COLLECTOR, run, "write")
    assert not may(acl.LOG_COLLECTOR, user_history, "write")
    assert may(acl.LOG_COLLECTOR, keys.retired(0), "write")
    assert not may(acl.PROJECTOR, keys.retired(0), "write")
    assert not may(acl.LOG_COLLECTOR, projection, "write")
    assert may(acl.LOG_COLLECTOR, output, "write")
    assert not may(acl.PROJECTOR, run, "write")
    assert not may(acl.PROJECTOR, output, "read")
    assert may(acl.PROJECTOR, projection, "write")
    assert may(acl.API, projection, "read")
    assert not may(acl.API, projection, "write")
    assert not may(acl.API, output, "write")
    assert may(acl.API, user_history, "write")
    assert may(acl.API, keys.aggregate_stream("node:node-0", 0), "write")  # cordon, drain
    assert not may(acl.API, keys.heartbeat("node-0"), "write")
    assert not may(acl.API, keys.scheduler_lease(0), "write")
    assert not may(acl.SCHEDULER, user_history, "write")
    assert may(acl.SCHEDULER, keys.scheduler_lease(0), "write")
    assert not may(acl.SCHEDULER, keys.heartbeat("node-0"), "write")


def test_the_acl_file_turns_the_default_user_off_and_holds_only_hashes() -> None:
    passwords = {user: f"password-of-{user}" for user in acl.USERS}
    text = acl.acl_file({user: acl.password_hash(p) for user, p in passwords.items()})
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["user", "default", "off"]
    assert "nopass" not in text
    for user, password in passwords.items():
        assert password not in text
        line = next(line for line in lines if line.split()[1] == user)
        assert f" #{hashlib.sha256(password.encode()).hexdigest()} " in line
        assert not any(word.startswith(">") for word in line.split())
    assert [line.split()[1] for line in lines] == ["default", *acl.USERS]


def test_a_user_without_a_rule_is_an_error() -> None:
    with pytest.raises(ValueError, match="no ACL rule for mallory"):
        acl.acl_file({"mallory": acl.password_hash("x")})


def _patterns(user: str) -> list[str]:
    rule = acl.RULES[user]
    return [*rule.both, *rule.reads, *rule.writes]


def test_only_the_api_writes_secret_values_and_only_node_agents_read_them_too() -> None:
    values = keys.secret_values("alice")
    assert may(acl.API, values, "write")
    assert may(acl.API, values, "read")
    assert may(acl.NODE_AGENT, values, "read")
    assert not may(acl.NODE_AGENT, values, "write")
    for user in (acl.SCHEDULER, acl.PROJECTOR, acl.LOG_COLLECTOR):
        assert not may(user, values, "read"), user
        assert not may(user, values, "write"), user


#: What a cluster client runs beside its commands (redis-py's ``RedisCluster``: ``CLUSTER
#: SLOTS`` and ``COMMAND`` at start, ``ASKING``, ``READONLY``).
CLUSTER_CLIENT = {"cluster|slots", "cluster|shards", "cluster|nodes", "cluster|myid", "asking"}
CLUSTER_CLIENT |= {"readonly", "readwrite", "command"}
#: What changes a cluster: the operator's alone.
CLUSTER_ADMIN = {"cluster|addslots", "cluster|addslotsrange", "cluster|meet", "cluster|forget"}
CLUSTER_ADMIN |= {"cluster|replicate", "cluster|failover", "cluster|reset", "cluster|setslot"}


@pytest.mark.parametrize("user", acl.SERVICES)
def test_every_service_may_ask_a_cluster_where_slots_are_and_never_change_it(user: str) -> None:
    commands = set(acl.RULES[user].commands)
    assert commands >= CLUSTER_CLIENT
    assert not commands & CLUSTER_ADMIN


@pytest.mark.parametrize("user", [acl.SCHEDULER, acl.NODE_AGENT, acl.API])
def test_who_appends_may_wait_for_replicas_to_hold_it(user: str) -> None:
    assert {"fcall", "wait", "waitaof"} <= set(acl.RULES[user].commands)


def test_the_replication_user_only_replicates() -> None:
    line = acl.user_line(acl.REPLICATION, acl.password_hash("x"))
    words = line.split()
    assert words[:3] == ["user", acl.REPLICATION, "on"]
    assert sorted(w for w in words if w.startswith("+")) == ["+ping", "+psync", "+replconf"]
    assert "-@all" in words
    assert not any(w.startswith(("~", "%", "&")) for w in words)  # no key, no channel
    assert not acl.loads_append_function(acl.REPLICATION)
