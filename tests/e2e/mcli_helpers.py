"""Running ``mcli`` against a local stack: the stack (as ``mcli dev up`` starts it), the
environment that points the CLI and the SDK at it, and a subprocess runner.

The CLI runs as ``python -m cli.main`` in the repository, exactly as the ``mcli`` script runs
it. Output is made stable for comparisons: UTC times, 200 columns, a fixed user.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cli.api import Api
from cli.client import Client
from cli.models import Run, now_ms
from cli.reads import fetch_run
from cli.stack import LocalStack, StackConfig
from cli.stackkey import ensure_admin, read_key
from cli.stackready import operator_store, wait_ready
from events.status import RunStatus
from services.api.accounts import Accounts
from services.api.users import Directory
from tests.e2e.denials import denials
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
USER = "alice@example.com"
NODES, GPUS = 2, 8


@dataclass
class Mcli:
    env: dict[str, str]
    stack: LocalStack

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            cwd=ROOT,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        """stdout of a command that must succeed (its stderr in the failure message)."""
        done = self(*args, input=input)
        assert done.returncode == 0, f"mcli {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done.stdout

    def submit(self, example: str, *extra: str) -> str:
        """Submit ``examples/<example>.yaml``; the run's name."""
        out = self.ok("run", "-f", str(EXAMPLES / f"{example}.yaml"), *extra)
        match = re.search(r"✔ Run (\S+) submitted\.", out)
        assert match, out
        return match[1]


def client_env(stack: LocalStack, key: str | None = None) -> dict[str, str]:
    """What the CLI (and the SDK, in process) need to find the stack's API, as its admin (or
    as the owner of ``key``), and print stably; and the log, for the operator's commands
    (``mcli projections rebuild``)."""
    return {
        **stack.operator_settings().redis_env(),
        "MOSAICML_API_ENDPOINT": stack.api_url,
        "MOSAICML_API_KEY": key or read_key(stack.state_dir) or "",
        "RUNPLANE_HOME": str(stack.state_dir / "home"),
        "TZ": "UTC",
        "COLUMNS": "200",
    }


def admin_client(stack: LocalStack) -> Client:
    """The CLI's client of the stack's API, as its admin."""
    return Client(Api(stack.api_url, read_key(stack.state_dir) or ""))


async def user_key(stack: LocalStack, name: str, *, admin: bool = False) -> str:
    """A key of user ``name`` (added now), as the stack's admin issues it."""
    store = operator_store(stack)
    try:
        accounts = Accounts(store, Directory(store))
        _, key = await accounts.add(USER, name, "admin" if admin else "user")
    finally:
        await store.close()
    return key


async def make_admin(stack: LocalStack) -> None:
    """``USER`` is the stack's admin with a key in its state directory, as ``mcli dev up``
    makes whoever runs it."""
    store = operator_store(stack)
    try:
        await ensure_admin(store, stack.state_dir, USER, now_ms())
    finally:
        await store.close()


@contextmanager
def sdk_env(stack: LocalStack) -> Iterator[None]:
    """The SDK, in this process, talks to ``stack`` (and not to anything configured)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in client_env(stack).items():
            patch.setenv(key, value)
        patch.delenv("RUNPLANE_GPU_PRICES", raising=False)
        yield


@contextmanager
def running_stack(
    state_dir: Path, nodes: int = NODES, extra_env: dict[str, str] | None = None
) -> Iterator[Mcli]:
    """A local stack of ``nodes`` nodes x 8 GPUs, ready (nodes registered, services
    answering); ``extra_env``: more of its services' environment."""
    stack = LocalStack(state_dir)
    config = StackConfig(
        nodes=nodes, gpus_per_node=GPUS, grace_period_s=2.0, extra_env=extra_env or {}
    )
    stack.up(config)
    try:
        asyncio.run(make_admin(stack))
        asyncio.run(wait_ready(stack, config))
        env = {**os.environ, **client_env(stack)}
        env.pop("RUNPLANE_GPU_PRICES", None)
        yield Mcli(env=env, stack=stack)
        assert not denials(stack), denials(stack)
    finally:
        stack.down()


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "Traceback" not in done.stdout, done.stdout


_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d [AP]M")
_HEX = re.compile(r"\b[0-9a-f]{32}\b")
_NODE = re.compile(r"\bnode-\d\b")
_PORT = re.compile(r"(127\.0\.0\.1):\d+")


def normalise(text: str, names: list[str]) -> str:
    """Times, ids, random suffixes and node numbers replaced by same-width placeholders (so
    table widths stay as they were)."""
    for name in names:
        base, _, suffix = name.rpartition("-")
        text = text.replace(name, f"{base}-{'x' * len(suffix)}")
    text = _TIME.sub("YYYY-MM-DD HH:MM PM", text)
    text = _HEX.sub("0" * 32, text)
    text = _PORT.sub(r"\1:PORT", text)
    return _NODE.sub("node-N", text)


async def wait_for(
    stack: LocalStack, name: str, *statuses: RunStatus, resumption: int = 0, within: float = 60
) -> Run:
    """Wait until resumption ``resumption`` of run ``name`` is in one of ``statuses``."""
    client = admin_client(stack)

    async def reached() -> Run | None:
        run = await fetch_run(client, name)
        latest = run.latest_resumption
        return run if latest.index == resumption and latest.status in statuses else None

    try:
        what = f"{name} resumption {resumption} to be {'/'.join(s.value for s in statuses)}"
        found: Run = await eventually(reached, what=what, within=within)
        return found
    finally:
        await client.close()


def submit(mcli: Mcli, tmp: Path, name: str, command: str, **env: str) -> str:
    """Submit a 1-GPU run of ``command`` with ``env`` from a YAML file in ``tmp``; its name."""
    spec = {
        "name": name,
        "image": "python:3.11",
        "command": command,
        "compute": {"cluster": "local", "gpus": 1},
        "env_variables": env,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = mcli.ok("run", "-f", str(path))
    return out.split("Run ", 1)[1].split(" ", 1)[0]
