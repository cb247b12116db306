"""A service process loads only what it uses: each entry module, imported in a fresh
interpreter as ``python -m services.<name>`` imports it, leaves out what it never needs
(``services.core.imports`` hides rich; the rest is kept out by where the imports are)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# Imported by a service that does not use them, these cost memory in every process.
# (``cryptography`` itself is imported by redis-py to see whether it is there: its ciphers, about
# 9 MiB, are what ``services.core.sealing`` imports only at its first seal or open.)
# NVML (``pynvml``) is loaded by a node-agent's settings when they ask the machine for its GPUs.
EVERYWHERE = ("rich", "pygments", "kubernetes", "yaml", "cryptography.hazmat", "pynvml")

# FastStream imports uvicorn (and click through it) for an ASGI app no service runs: a service on
# the broker hides it (``services.core.imports.BROKER_UNUSED``).
ON_BROKER = (*EVERYWHERE, "uvicorn", "click")
# OpenSSL is mapped by ``ssl`` (asyncio and redis-py import it): about 5 MiB a process.
STDLIB_ONLY = (*EVERYWHERE, "faststream", "redis", "pydantic", "structlog", "asyncio", "ssl")

ENTRIES = [
    pytest.param(["services.scheduler.__main__"], ON_BROKER, id="scheduler"),
    pytest.param(["services.log_collector.__main__"], ON_BROKER, id="log-collector"),
    # The projector reads its consumer group itself and runs no broker.
    pytest.param(["services.projector.__main__"], (*EVERYWHERE, "faststream"), id="projector"),
    # The API server reads through the store and the projections; it runs no broker.
    pytest.param(["services.api.__main__"], (*EVERYWHERE, "faststream"), id="api"),
    # The local stack's supervisor starts processes and waits: the standard library only (no
    # client library, no settings, no structlog: ``services.core.plainlog``).
    pytest.param(["cli.supervisor"], STDLIB_ONLY, id="supervisor"),
    # A node-agent imports its app after the first heartbeat; with the process executor (the
    # default) it never loads the kubernetes client.
    pytest.param(
        ["services.node_agent.__main__", "services.node_agent.app"], ON_BROKER, id="node-agent"
    ),
    # A node's shim fork server, with what it imports before its first fork: the standard
    # library only (the shim's own client imports ssl for a rediss:// server alone).
    pytest.param(
        ["services.node_agent.shim.forkserver", "services.node_agent.shim.follow"],
        STDLIB_ONLY,
        id="forkserver",
    ),
]


def loaded(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter holds after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([n for n in {watched!r} if sys.modules.get(n) is not None]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    found: list[str] = json.loads(done.stdout)
    return found


@pytest.mark.parametrize(("modules", "kept_out"), ENTRIES)
def test_a_service_leaves_out_what_it_does_not_use(
    modules: list[str], kept_out: tuple[str, ...]
) -> None:
    assert loaded(modules, kept_out) == []


def test_the_check_sees_an_import() -> None:
    # The kubernetes executor, once chosen, does load the client (and structlog, without the
    # entry's hiding, loads rich): what the test above watches for is what would show.
    assert loaded(["services.node_agent.kube.executor"], ("kubernetes",)) == ["kubernetes"]
    assert loaded(["structlog"], ("rich",)) == ["rich"]
    assert loaded(["faststream"], ("uvicorn",)) == ["uvicorn"]
    assert loaded(["structlog"], ("asyncio", "ssl")) == ["asyncio", "ssl"]


# The services that read or write the archive's Parquet (``services.core.imports.lean_arrow``).
ARCHIVE_READERS = [
    "services.projector.__main__",
    "services.api.__main__",
    "services.log_collector.__main__",
]


def arrow_pool(modules: list[str], **env: str) -> str:
    """The allocator Arrow uses in a fresh interpreter that imported ``modules`` first."""
    code = (
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "import pyarrow\n"
        "print(pyarrow.default_memory_pool().backend_name)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment | env,
    )
    assert done.stderr == ""  # Arrow warns there of a setting it cannot honour
    return done.stdout.strip()


@pytest.mark.parametrize("entry", ARCHIVE_READERS)
def test_a_service_that_reads_the_archive_gives_arrow_memory_back(entry: str) -> None:
    lean = "jemalloc" if sys.platform == "linux" and platform.machine() == "x86_64" else "system"
    assert arrow_pool([entry]) == lean
    # Arrow's own default otherwise: what ``lean_arrow`` changes.
    assert arrow_pool([]) == "mimalloc"
    assert arrow_pool([entry], ARROW_DEFAULT_MEMORY_POOL="system") == "system"  # the operator's
