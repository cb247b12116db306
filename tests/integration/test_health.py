"""The liveness probe against a real server: a running service is healthy, a stopped one is not
(at once, not after an expiry), an unreachable server is a one-line answer, and a node-agent is
probed on the very heartbeat key the agent writes. The services run as real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from events import keys
from services.core.health import ProbeSettings, instance_name, keep_alive, probe, probed_key
from services.core.settings import Settings
from services.node_agent.heartbeat import first_beat
from services.node_agent.settings import NodeAgentSettings
from tests.waiting import eventually


def _probe_cli(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What a container's health check runs."""
    return subprocess.run(
        [sys.executable, "-m", "services.core.health", service],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A URL whose port is bound but never listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"redis://user:s3cret@127.0.0.1:{sock.getsockname()[1]}/0"


async def test_alive_while_running_and_missing_at_once_after_a_clean_stop(
    redis: aioredis.Redis, redis_url: str
) -> None:
    key = keys.liveness("projector", "probe-test")
    beat = asyncio.create_task(keep_alive(Settings(redis_url=redis_url), "projector", "probe-test"))
    try:
        await eventually(
            lambda: probe(Settings(redis_url=redis_url), key).healthy, what="the liveness key"
        )
        assert 0 < await redis.pttl(key) <= 15_000
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
    verdict = probe(Settings(redis_url=redis_url), key)
    assert not verdict.healthy
    assert verdict.line.startswith(f"unhealthy: {key} is missing")


async def test_a_key_nobody_renews_is_missing(redis: aioredis.Redis, redis_url: str) -> None:
    verdict = probe(Settings(redis_url=redis_url), keys.liveness("scheduler", "nobody"))
    assert not verdict.healthy
    assert "\n" not in verdict.line


def test_an_unreachable_server_is_one_line_without_the_password(refusing_url: str) -> None:
    verdict = probe(
        Settings(redis_url=refusing_url), keys.liveness("scheduler", "x"), timeout_s=1.0
    )
    assert not verdict.healthy
    assert "did not answer" in verdict.line
    assert "s3cret" not in verdict.line
    assert "\n" not in verdict.line

    result = _probe_cli("scheduler", {"RUNPLANE_REDIS_URL": refusing_url})
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy: the log's server at redis://***@127.0.0.1:")


def test_bad_settings_are_a_usage_error(redis_url: str) -> None:
    result = _probe_cli("node-agent", {"RUNPLANE_REDIS_URL": redis_url, "RUNPLANE_NODE": ""})
    assert result.returncode == 2
    assert result.stderr.startswith("unhealthy: RUNPLANE_NODE:")


async def test_a_node_agent_is_probed_on_its_own_heartbeat(
    redis: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {"RUNPLANE_REDIS_URL": redis_url, "RUNPLANE_NODE": "gpu-node-7"}
    assert _probe_cli("node-agent", env).returncode == 1

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    agent = NodeAgentSettings(gpus=2, data_dir=tmp_path)
    first_beat(agent)  # what the agent does first thing on start

    assert probed_key("node-agent", ProbeSettings()) == keys.heartbeat(agent.node)
    result = _probe_cli("node-agent", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"healthy: {keys.heartbeat('gpu-node-7')}")


@pytest.mark.parametrize(
    ("module", "service"),
    [
        ("services.scheduler", "scheduler"),
        ("services.projector", "projector"),
        ("services.log_collector", "log-collector"),
    ],
)
async def test_a_service_process_is_healthy_until_it_stops(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, module: str, service: str
) -> None:
    env = {"RUNPLANE_REDIS_URL": redis_url, "RUNPLANE_ARCHIVE_DIR": str(tmp_path / "archive")}
    key = keys.liveness(service, instance_name())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env=os.environ | env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await eventually(
            lambda: probe(Settings(redis_url=redis_url), key).healthy, what=f"{service} alive"
        )
        healthy = _probe_cli(service, env)
        assert healthy.returncode == 0, healthy.stderr

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stopped = _probe_cli(service, env)
    assert stopped.returncode == 1
    assert stopped.stderr.startswith(f"unhealthy: {key} is missing")
