"""The local stack's Valkey credentials (services/core/acl.py, services/core/passwords.py): the
server refuses a client that does not log in and a wrong password, and each service what its
rule lacks; the passwords are 0600 files that a second ``up`` keeps, the server's ACL file holds
only their hashes, and no process of the stack (a run's included) shows a password in its
environment or command line, nor does any other file of the state directory hold one.

Not covered, because it is not so yet: a run's command runs as the node-agent's user, so it
could read the agent's password file (issue 20: ranks as their own uid)."""

from __future__ import annotations

import contextlib
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError

from cli.stack import LocalStack, StackConfig
from cli.stackfiles import secrets_dir
from events import keys
from events.status import RunStatus
from services.core import acl
from services.core.passwords import acl_path, password_file, read_password
from services.core.valkey import HOST
from tests.e2e.driver import Driver, driving, spec, stack_up
from tests.waiting import eventually

pytestmark = pytest.mark.e2e
NODES = 1


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with stack_up(tmp_path / "stack", StackConfig(nodes=NODES, grace_period_s=2.0)) as local:
        yield local


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    async with driving(stack, NODES) as drive:
        yield drive


def passwords(stack: LocalStack) -> dict[str, str]:
    return {u: read_password(password_file(secrets_dir(stack.state_dir), u)) for u in acl.USERS}


def as_user(stack: LocalStack, user: str) -> redis.Redis:
    password = passwords(stack)[user]
    return redis.Redis(host=HOST, port=stack.valkey_port, username=user, password=password)


def reply(stack: LocalStack, command: bytes) -> bytes:
    """The server's first reply line to ``command`` (inline), sent on a fresh connection."""
    with socket.create_connection((HOST, stack.valkey_port), timeout=5) as sock:
        sock.sendall(command + b"\r\n")
        return sock.recv(200).split(b"\r\n")[0]


def test_a_client_without_credentials_or_with_a_wrong_password_is_refused(
    stack: LocalStack,
) -> None:
    assert reply(stack, b"PING").startswith(b"-NOAUTH")
    assert reply(stack, b"GET " + keys.run_name("x").encode()).startswith(b"-NOAUTH")
    for user in (acl.NODE_AGENT, acl.OPERATOR, "default"):
        assert reply(stack, f"AUTH {user} wrong".encode()).startswith(b"-WRONGPASS")
    for user in acl.USERS:  # each password opens its own user, not another's
        other = passwords(stack)[acl.API if user != acl.API else acl.SCHEDULER]
        assert reply(stack, f"AUTH {user} {other}".encode()).startswith(b"-WRONGPASS")


@pytest.mark.parametrize(
    ("user", "command"),
    [
        (acl.NODE_AGENT, ("FLUSHALL",)),
        (acl.NODE_AGENT, ("SET", keys.projection_active("run_status"), "v0")),
        (acl.NODE_AGENT, ("ACL", "LIST")),
        (acl.API, ("CONFIG", "SET", "appendonly", "no")),
        (acl.SCHEDULER, ("KEYS", "*")),
        (acl.PROJECTOR, ("XADD", keys.aggregate_stream("run:r", 0), "*", "k", "v")),
        (acl.LOG_COLLECTOR, ("FUNCTION", "LOAD", "REPLACE", "#!lua name=runplane\n")),
    ],
)
def test_each_service_user_is_refused_what_it_must_not_do(
    stack: LocalStack, user: str, command: tuple[str, ...]
) -> None:
    with as_user(stack, user) as client:
        assert client.ping()  # logged in as ``user``
        with pytest.raises(NoPermissionError):
            client.execute_command(*command)
    with as_user(stack, acl.OPERATOR) as operator:
        operator.acl_log_reset()  # refused on purpose: the stack's end-of-test check ignores it


async def test_no_password_in_any_process_or_file_but_its_own(
    stack: LocalStack, driver: Driver
) -> None:
    secret = passwords(stack)
    # A run that shows what it was given, and stays running while the processes are read.
    run_id = await driver.submit(spec("env; echo end-of-env; sleep 60"))
    await driver.wait_for(run_id, RunStatus.RUNNING)

    async def environment() -> list[str] | None:
        lines = await driver.output(run_id)
        return lines if "end-of-env" in lines else None

    output = await eventually(environment, what="the run's environment in its output")
    assert any(line.startswith("PATH=") for line in output)
    assert not [line for line in output if "RUNPLANE_REDIS" in line]  # not even the file's name
    shown = _shown()
    assert len(shown) > len(stack.services) + 3  # the services, the server, a shim, the run...
    for user, password in secret.items():
        assert [where for where, text in shown.items() if password.encode() in text] == [], user
    await driver.stop_all()
    _only_in_their_own_files(stack, secret)


def test_a_second_up_keeps_the_passwords(tmp_path: Path) -> None:
    config = StackConfig(nodes=1, grace_period_s=2.0)
    with stack_up(tmp_path / "stack", config) as first:
        before = passwords(first)
    with stack_up(tmp_path / "stack", config) as second:
        assert passwords(second) == before
        with as_user(second, acl.OPERATOR) as operator:
            assert operator.acl_whoami() == acl.OPERATOR


def _shown() -> dict[str, bytes]:
    """The environment and command line of every process this user may read (the stack's,
    the run's, and any other), by ``<pid> environ|cmdline``."""
    shown = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            for part in ("environ", "cmdline"):
                with contextlib.suppress(OSError):  # ended meanwhile
                    shown[f"{proc.name} {part}"] = (proc / part).read_bytes()
    return shown


def _only_in_their_own_files(stack: LocalStack, secret: dict[str, str]) -> None:
    """Each password is in its own file and nowhere else in the state directory (the ACL file
    holds their hashes, the directory and the files are the user's only)."""
    directory = secrets_dir(stack.state_dir)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for user in acl.USERS:
        assert stat.S_IMODE(password_file(directory, user).stat().st_mode) == 0o600
    text = acl_path(directory).read_text()
    assert all(f"#{acl.password_hash(p)}" in text for p in secret.values())
    for written in stack.state_dir.rglob("*"):
        if written.is_file():
            content = written.read_bytes()
            for user, password in secret.items():
                if written != password_file(directory, user):
                    assert password.encode() not in content, f"{user}'s password in {written}"
