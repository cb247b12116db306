"""The passwords on disk and a real valkey-server started with their ACL file: 0600 files, kept
when written again, hashes only in the ACL file; the server refuses a client that does not log
in (NOAUTH), a wrong password (WRONGPASS), and each service what its rule lacks (NOPERM)."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError

from events import keys
from events.model import RunDeleted
from services.core import acl
from services.core.archiver import archive_older
from services.core.passwords import (
    REPLICATION_CONF,
    acl_path,
    password_file,
    provision,
    read_password,
)
from services.core.settings import Settings
from services.core.store import EventStore
from services.core.valkey import HOST, ValkeyProcess
from tests import factories as f


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    provision(directory)
    return directory


@pytest.fixture
def server(tmp_path: Path, secrets: Path) -> Iterator[ValkeyProcess]:
    valkey = ValkeyProcess(
        tmp_path / "valkey",
        acl_file=acl_path(secrets),
        login=(acl.OPERATOR, password_file(secrets, acl.OPERATOR)),
    )
    try:
        yield valkey.start()
    finally:
        valkey.stop()


def as_user(server: ValkeyProcess, secrets: Path, user: str) -> redis.Redis:
    password = read_password(password_file(secrets, user))
    return redis.Redis(host=HOST, port=server.port, username=user, password=password)


def test_each_password_is_a_0600_file_kept_when_written_again(secrets: Path) -> None:
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    passwords = {}
    for user in acl.USERS:
        path = password_file(secrets, user)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        passwords[user] = read_password(path)
        assert len(passwords[user]) >= 43  # 32 random bytes, URL-safe base64
    assert len(set(passwords.values())) == len(acl.USERS)
    text = acl_path(secrets).read_text()
    assert stat.S_IMODE(acl_path(secrets).stat().st_mode) == 0o600
    for password in passwords.values():
        assert password not in text
        assert f"#{acl.password_hash(password)}" in text
    provision(secrets)
    assert {user: read_password(password_file(secrets, user)) for user in acl.USERS} == passwords
    assert acl_path(secrets).read_text() == text


def test_the_command_line_writes_them_and_prints_no_password(tmp_path: Path) -> None:
    out = tmp_path / "compose-secrets"
    done = subprocess.run(
        [sys.executable, "-m", "services.core.passwords", str(out), "--acl-readable"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(acl_path(out).stat().st_mode) == 0o644  # a server of another uid reads it
    for user in acl.USERS:
        password = read_password(password_file(out, user))
        assert password not in done.stdout + done.stderr


def test_a_replicas_login_is_written_only_for_a_cluster(tmp_path: Path) -> None:
    out = tmp_path / "compose-secrets"
    command = [sys.executable, "-m", "services.core.passwords", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    conf = out / REPLICATION_CONF
    assert not conf.exists()
    done = subprocess.run(
        [*command, "--cluster"], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    password = read_password(password_file(out, acl.REPLICATION))
    assert conf.read_text().splitlines() == [
        f"masteruser {acl.REPLICATION}",
        f"masterauth {password}",
    ]
    assert password not in done.stdout + done.stderr


def test_a_client_that_does_not_log_in_gets_noauth(server: ValkeyProcess) -> None:
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(100).startswith(b"-NOAUTH")
    with pytest.raises(AuthenticationError), redis.Redis(host=HOST, port=server.port) as client:
        client.get("anything")


def test_a_wrong_password_gets_wrongpass(server: ValkeyProcess, secrets: Path) -> None:
    for user in (acl.NODE_AGENT, "default"):
        with socket.create_connection((HOST, server.port), timeout=5) as sock:
            sock.sendall(f"AUTH {user} not-the-password\r\n".encode())
            assert sock.recv(100).startswith(b"-WRONGPASS")
    with pytest.raises(AuthenticationError):
        redis.Redis(host=HOST, port=server.port, username="api", password="nope").ping()


@pytest.mark.parametrize(
    ("user", "command"),
    [
        (acl.NODE_AGENT, ("FLUSHALL",)),
        (acl.NODE_AGENT, ("ACL", "LIST")),
        (acl.NODE_AGENT, ("SET", keys.projection_active("run_status"), "v9")),
        (acl.NODE_AGENT, ("XRANGE", keys.log_ingest(), "-", "+")),  # its ranks' output: write-only
        (acl.NODE_AGENT, ("SET", keys.scheduler_lease(0), "mine")),
        (acl.NODE_AGENT, ("XADD", keys.aggregate_stream("user:alice", 0), "*", "k", "v")),
        (acl.NODE_AGENT, ("FUNCTION", "LOAD", "REPLACE", "#!lua name=x\n")),
        (acl.API, ("CONFIG", "SET", "appendonly", "no")),
        (acl.API, ("HSET", keys.projection_rows("run_status", "v2", "runs"), "r", "{}")),
        (acl.API, ("FUNCTION", "LOAD", "REPLACE", "#!lua name=x\n")),
        (acl.SCHEDULER, ("KEYS", "*")),
        (acl.SCHEDULER, ("XADD", keys.aggregate_stream("user:alice", 0), "*", "k", "v")),
        (acl.SCHEDULER, ("SHUTDOWN",)),
        (acl.PROJECTOR, ("XADD", keys.aggregate_stream("run:r1", 0), "*", "k", "v")),
        (acl.PROJECTOR, ("FUNCTION", "FLUSH")),
        (acl.LOG_COLLECTOR, ("SET", keys.run_name("hello-abcdef"), "r1")),
        (acl.LOG_COLLECTOR, ("SUBSCRIBE", "anything")),
        (acl.API, ("SET", keys.log_archive(0), "{}")),  # the archive's pointer: the operator's
        (acl.SCHEDULER, ("XTRIM", keys.log_stream(0), "MINID", "1-0")),
    ],
)
def test_a_service_is_refused_what_its_rule_lacks(
    server: ValkeyProcess, secrets: Path, user: str, command: tuple[str, ...]
) -> None:
    with as_user(server, secrets, user) as client, pytest.raises(NoPermissionError):
        client.execute_command(*command)


def test_what_a_service_needs_it_may_do(server: ValkeyProcess, secrets: Path) -> None:
    with as_user(server, secrets, acl.NODE_AGENT) as node:
        node.set(keys.heartbeat("node-0"), "1", px=1000)
        node.xadd(keys.log_ingest(), {"l": "hello"})
    with as_user(server, secrets, acl.OPERATOR) as operator:
        assert operator.acl_whoami() == acl.OPERATOR
        assert operator.xlen(keys.log_ingest()) == 1
        operator.set(keys.log_archive(0), '{"dir": "/a", "last": "1-0"}')
    for replaying in (acl.SCHEDULER, acl.PROJECTOR, acl.API):  # the log from its start
        with as_user(server, secrets, replaying) as client:
            assert client.get(keys.log_archive(0)) is not None
    with (
        pytest.raises(AuthenticationError),
        redis.Redis(
            host=HOST, port=server.port, username="default", password="anything"
        ) as default,
    ):
        default.ping()  # off, whatever the password


async def test_the_log_collector_may_archive_the_log_under_retain(
    server: ValkeyProcess, secrets: Path, tmp_path: Path
) -> None:
    # RUNPLANE_RETAIN: its pass reads the groups and projections, writes the archive's pointer
    # and trims the log, on its own login; a service without the rule may not (above).
    with as_user(server, secrets, acl.OPERATOR) as operator:
        for n in range(3):
            operator.xadd(keys.log_stream(0), {"n": str(n)})
        operator.xgroup_create(keys.log_stream(0), "scheduler", id="$")
        operator.set(keys.projection_active("run_status"), "v1")
    login = acl.LOG_COLLECTOR, read_password(password_file(secrets, acl.LOG_COLLECTOR))
    client = aioredis.Redis(host=HOST, port=server.port, username=login[0], password=login[1])
    try:
        done = await archive_older(client, tmp_path / "archive", older_than_s=0, partitions=1)
    finally:
        await client.aclose()
    assert (done.events, done.trimmed) == (0, 0)  # the projection holds it back: nothing yet
    assert done.held_by == "projection run_status"
    with as_user(server, secrets, acl.OPERATOR) as operator:
        operator.set(keys.projection_checkpoint("run_status", "v1"), "9999999999999-0")
    client = aioredis.Redis(host=HOST, port=server.port, username=login[0], password=login[1])
    try:
        done = await archive_older(client, tmp_path / "archive", older_than_s=0, partitions=1)
    finally:
        await client.aclose()
    assert (done.events, done.trimmed) == (3, 3)


def login_as(server: ValkeyProcess, secrets: Path, user: str) -> aioredis.Redis:
    password = read_password(password_file(secrets, user))
    return aioredis.Redis(host=HOST, port=server.port, username=user, password=password)


async def test_under_retain_a_run_at_rest_leaves_the_server_and_the_api_still_reads_it(
    server: ValkeyProcess, secrets: Path, tmp_path: Path
) -> None:
    # The log-collector's login retires a run's history (runplane_retire); the API's reads it
    # back from the archive and restores it when it takes an event again.
    url = f"redis://{HOST}:{server.port}"
    run = f.submitted()
    deleted = RunDeleted(id=f.new_id(), actor=run.actor, run_id=run.run_id)
    operator = EventStore(login_as(server, secrets, acl.OPERATOR), Settings(redis_url=url))
    api = EventStore(login_as(server, secrets, acl.API), Settings(redis_url=url))
    agent = EventStore(login_as(server, secrets, acl.NODE_AGENT), Settings(redis_url=url))
    collector = login_as(server, secrets, acl.LOG_COLLECTOR)
    try:
        await operator.load_function()
        await api.append([run], expected_version=0)
        await api.append([deleted], expected_version=1)
        history = await api.history(run.aggregate)
        done = await archive_older(collector, tmp_path / "archive", older_than_s=0, partitions=1)
        assert (done.events, done.retired) == (2, 1)
        assert not await collector.exists(keys.aggregate_stream(run.aggregate, 0))
        assert await api.history(run.aggregate) == history
        # The API restores it (reading the archive) when it is appended to again.
        appended = await api.append([f.updated(run.run_id, 1)], expected_version=2)
        assert appended.version == 3
        assert await agent.history(run.aggregate) == [
            *history,
            *(await api.history(run.aggregate))[2:],
        ]
        assert len(await agent.history(run.aggregate)) == 3
    finally:
        for store in (operator, api, agent):
            await store.close()
        await collector.aclose()
