"""Integrations on the ``container`` executor, each in a container of the run's image sharing
the rank's ``/runplane`` with the command's, without any network but loopback (the ranks share
the node's): ``git_repo`` from a ``git daemon`` and ``pip_packages`` from a wheel served over
HTTP, both on loopback; a failing integration, which fails the rank with its last words; and a
stop during an integration, which ends its container."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import io
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench.podlab import Podlab, free_port
from events.model import IntegrationFailed, IntegrationFinished, IntegrationStarted
from events.status import RunStatus
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, lines, spec
from tests.waiting import eventually

WHEEL = "tinypkg-0.1-py3-none-any.whl"
NO_PYPI = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _wheel() -> bytes:
    dist = "tinypkg-0.1.dist-info"
    files = {
        "tinypkg/__init__.py": b'GREETING = "hi from tinypkg"\n',
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},sha256={digest(data)},{len(data)}\n" for path, data in files.items())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr(f"{dist}/RECORD", record + f"{dist}/RECORD,,\n")
    return buffer.getvalue()


@pytest.fixture
def wheel_url(tmp_path: Path) -> Iterator[str]:
    """A wheel served over HTTP on loopback, for as long as the test runs."""
    served = tmp_path / "wheels"
    served.mkdir()
    (served / WHEEL).write_bytes(_wheel())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{WHEEL}"
    finally:
        server.shutdown()
        server.server_close()


def _git(*args: str, cwd: Path) -> str:
    ident = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
    done = subprocess.run(
        ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A repository whose ``main`` holds two commits, served by ``git daemon`` on loopback;
    its URL and its first commit."""
    origin = tmp_path / "origin"
    bare = origin / "hello.git"
    bare.mkdir(parents=True)
    _git("init", "--bare", "-q", cwd=bare)
    work = tmp_path / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "hello.txt").write_text("version one\n")
    _git("add", "hello.txt", cwd=work)
    _git("commit", "-q", "-m", "one", cwd=work)
    first = _git("rev-parse", "HEAD", cwd=work)
    (work / "hello.txt").write_text("version two\n")
    _git("commit", "-q", "-am", "two", cwd=work)
    _git("push", "-q", str(bare), "main", cwd=work)
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={origin}",
         "--listen=127.0.0.1", f"--port={port}", str(origin)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"git://127.0.0.1:{port}/hello.git"
    try:
        deadline = time.monotonic() + 15
        while not _answers(url):
            assert time.monotonic() < deadline, "git daemon did not answer"
            time.sleep(0.05)  # allowed: polling inside a deadline loop
        yield url, first
    finally:
        daemon.terminate()
        daemon.wait()


def _answers(url: str) -> bool:
    done = subprocess.run(["git", "ls-remote", url], capture_output=True, check=False)
    return done.returncode == 0


async def test_git_repo_and_pip_packages_run_in_the_image_before_the_command(
    *,
    container_agent: AgentFactory,
    scheduler: MiniScheduler,
    redis: aioredis.Redis,
    python_image: str,
    wheel_url: str,
    git_repo: tuple[str, str],
) -> None:
    url, first = git_repo
    agent = container_agent()
    await agent.start()
    run = spec(
        "cat hello/hello.txt; python -c 'import tinypkg; print(tinypkg.GREETING)'; "
        "command -v python",
        image=python_image,
        env_variables=NO_PYPI,
        integrations=[
            {"integration_type": "git_repo", "git_repo": url, "git_branch": "main",
             "git_commit": first, "path": "hello"},
            {"integration_type": "pip_packages", "packages": [wheel_url]},
        ],
    )  # fmt: skip
    run_id = await scheduler.submit(run, [("node-a", [0])])

    await scheduler.wait_status(run_id, RunStatus.COMPLETED, within=120)
    events = await scheduler.events(run_id)
    started = [e.index for e in events if isinstance(e, IntegrationStarted)]
    finished = [e.index for e in events if isinstance(e, IntegrationFinished)]
    assert started == finished == [0, 1]
    wanted = [b"version one", b"hi from tinypkg", b"/runplane/venv/bin/python"]
    await eventually(lambda: _says_all(redis, run_id, wanted), what="the command's output")


async def _says_all(redis: aioredis.Redis, run_id: str, wanted: list[bytes]) -> bool:
    found = await lines(redis, run_id)
    return all(line in found for line in wanted)


async def test_a_failing_integration_fails_the_rank_with_its_last_words(
    container_agent: AgentFactory,
    scheduler: MiniScheduler,
    python_image: str,
    wheel_url: str,
) -> None:
    agent = container_agent()
    await agent.start()
    missing = wheel_url.replace(WHEEL, "nothing-0.1-py3-none-any.whl")
    run = spec(
        "echo never",
        image=python_image,
        env_variables=NO_PYPI,
        integrations=[{"integration_type": "pip_packages", "packages": [missing]}],
    )
    run_id = await scheduler.submit(run, [("node-a", [0])])

    state = await scheduler.wait_status(run_id, RunStatus.FAILED, within=120)
    reason = state.latest.reason
    assert reason is not None
    assert (reason.category, reason.code) == ("user", "IntegrationFailed")
    assert "404" in reason.message
    failed = next(e for e in await scheduler.events(run_id) if isinstance(e, IntegrationFailed))
    assert failed.index == 0
    assert "404" in failed.error


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server on loopback that takes connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=hold, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/{WHEEL}"
    finally:
        server.close()
        for connection in held:
            connection.close()


async def test_a_stop_during_an_integration_ends_its_container(
    container_agent: AgentFactory,
    scheduler: MiniScheduler,
    podlab: Podlab,
    python_image: str,
    silent_url: str,
) -> None:
    agent = container_agent()
    await agent.start()
    run = spec(
        "echo never",
        image=python_image,
        env_variables=NO_PYPI,
        integrations=[{"integration_type": "pip_packages", "packages": [silent_url]}],
    )
    run_id = await scheduler.submit(run, [("node-a", [0])])
    await eventually(
        lambda: _integrations(podlab) == 1, what="the integration's container", within=60
    )

    await scheduler.stop(run_id)

    state = await scheduler.wait_status(run_id, RunStatus.STOPPED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "Stopped"
    await eventually(lambda: _integrations(podlab) == 0, what="its container removed")
    events = await scheduler.events(run_id)
    assert not any(isinstance(e, IntegrationFinished | IntegrationFailed) for e in events)


def _integrations(podlab: Podlab) -> int:
    listed = podlab.podman("ps", "--filter", "label=runplane.dev/role=integration", "--quiet")
    return len(listed.split())
