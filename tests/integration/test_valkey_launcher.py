"""The Valkey launcher against a real valkey-server: config, durability across SIGKILL, adoption."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
import redis as redis_sync

from services.core.valkey import PIDFILE, PORTFILE, ValkeyError, ValkeyProcess

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis


def _client(server: ValkeyProcess) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(server.url, socket_timeout=5)


def test_start_answers_ping_with_durable_loopback_config(valkey_server: ValkeyProcess) -> None:
    assert valkey_server.url == f"redis://127.0.0.1:{valkey_server.port}/0"
    assert valkey_server.is_running()
    assert (valkey_server.data_dir / PIDFILE).read_text().strip() == str(valkey_server.pid)
    assert (valkey_server.data_dir / PORTFILE).read_text().strip() == str(valkey_server.port)
    with _client(valkey_server) as client:
        assert client.ping() is True
        config = client.config_get("*")
    assert config["bind"].split() == ["127.0.0.1"]
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "always"
    assert config["save"] == ""
    assert config["dir"] == str(valkey_server.data_dir)


def test_entries_survive_sigkill_and_restart(valkey_server: ValkeyProcess) -> None:
    with _client(valkey_server) as client:
        ids = [client.xadd("runs", {"seq": str(n).encode()}) for n in range(100)]
        before = client.xrange("runs")
    pid, port = valkey_server.pid, valkey_server.port

    valkey_server.kill()
    assert not valkey_server.is_running()
    assert ValkeyProcess.adopt(valkey_server.data_dir) is None  # stale pidfile, nothing answers

    valkey_server.restart()
    assert valkey_server.port == port
    assert valkey_server.pid != pid
    with _client(valkey_server) as client:
        after = client.xrange("runs")
    assert after == before
    assert [entry_id for entry_id, _ in after] == ids


def test_port_in_use_fails_with_the_server_log(
    valkey_server: ValkeyProcess, tmp_path: Path
) -> None:
    second = ValkeyProcess(tmp_path / "second", port=valkey_server.port)
    with pytest.raises(ValkeyError, match="exited before answering PING") as error:
        second.start(timeout=10)
    assert "Address already in use" in str(error.value)
    assert not second.is_running()
    assert valkey_server.is_running()


def test_detached_server_is_adopted_from_its_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "detached"
    server = ValkeyProcess(data_dir, detach=True).start()
    try:
        assert server.pid is not None
        assert os.getsid(server.pid) == server.pid  # its own session: outlives the parent

        adopted = ValkeyProcess.adopt(data_dir)
        assert adopted is not None
        assert (adopted.pid, adopted.port, adopted.url) == (server.pid, server.port, server.url)
        with _client(adopted) as client:
            client.xadd("runs", {"seq": b"1"})

        adopted.stop()
        assert not adopted.is_running()
        assert ValkeyProcess.adopt(data_dir) is None

        adopted.restart()  # the adopter can bring it back, with its data
        with _client(adopted) as client:
            assert client.xlen("runs") == 1
        adopted.stop()
    finally:
        server.stop()


def test_adopt_without_a_server_is_none(tmp_path: Path) -> None:
    assert ValkeyProcess.adopt(tmp_path) is None


async def test_session_store_client_starts_empty(redis: aioredis.Redis) -> None:
    assert await redis.dbsize() == 0
    entry_id = await redis.xadd("runs", {"seq": b"1"})
    assert await redis.xrange("runs") == [(entry_id, {b"seq": b"1"})]
