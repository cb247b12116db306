"""The environment of a rank's command: the node's, the run's ``env_variables``, the run owner's
secrets (``services.node_agent.secrets``), then mcli's.

mcli's variables come last, so a run cannot break its own rendezvous by accident:
MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE, NUM_NODES, LOCAL_WORLD_SIZE, RUN_NAME,
RESUMPTION_INDEX, PARAMETERS and CUDA_VISIBLE_DEVICES (the GPU indices of the placement).

- WORLD_SIZE is the attempt's GPUs; LOCAL_WORLD_SIZE this rank's. A run without GPUs runs one
  process per rank: WORLD_SIZE is the number of ranks and LOCAL_WORLD_SIZE 1.
- MASTER_PORT is derived from the run and attempt, so every rank computes the same port
  without talking to the others, and a retry gets a different one.
- A rank that runs as a user of its own (``isolation``) gets its home as ``HOME``.
- The node-agent's own settings (``RUNPLANE_*``) are not passed on, nor the node's mcli
  settings (``MOSAICML_*``, ``MCLI_*``: an operator's API key must not reach a run); the
  platform's variables come last of all (``platform``: the rank's run token,
  ``services.node_agent.runtoken``), so a run cannot point its token elsewhere.

Pure: the caller passes the base environment and the paths.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from services.node_agent.job import RankJob

MASTER_PORT_BASE = 20_000
MASTER_PORT_SPAN = 20_000
_NOT_PASSED = ("RUNPLANE_", "MOSAICML_", "MCLI_")


def master_port(run_id: str, attempt: int) -> int:
    """A port in [20000, 40000), the same on every rank of one attempt."""
    return MASTER_PORT_BASE + zlib.crc32(f"{run_id}/{attempt}".encode()) % MASTER_PORT_SPAN


def world_sizes(job: RankJob) -> tuple[int, int]:
    """(WORLD_SIZE, LOCAL_WORLD_SIZE) of the rank."""
    total = sum(len(rank.gpus) for rank in job.placement)
    if total == 0:
        return len(job.placement), 1
    return total, len(job.gpus)


def base_environment(environ: Mapping[str, str], home: Path | None = None) -> dict[str, str]:
    """The node's environment without the agent's own settings and the node's mcli ones;
    ``home``: the rank's own (it runs as a user of its own: the agent's is not its to write)."""
    env = {name: value for name, value in environ.items() if not name.startswith(_NOT_PASSED)}
    if home is not None:
        env["HOME"] = str(home)
        env.pop("XDG_CACHE_HOME", None)
        env.pop("XDG_CONFIG_HOME", None)
    return env


def rank_environment(
    job: RankJob,
    *,
    base: Mapping[str, str],
    master_addr: str,
    parameters_path: Path,
    venv: Path | None = None,
    platform: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> dict[str, str]:
    world, local = world_sizes(job)
    env = base_environment(base, home)
    env.update(job.spec.env_variables)
    env.update(secrets or {})
    env.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port(job.run_id, job.attempt)),
        NODE_RANK=str(job.rank),
        WORLD_SIZE=str(world),
        NUM_NODES=str(len(job.placement)),
        LOCAL_WORLD_SIZE=str(local),
        RUN_NAME=job.run_name,
        RESUMPTION_INDEX=str(job.attempt),
        PARAMETERS=str(parameters_path),
        CUDA_VISIBLE_DEVICES=",".join(str(gpu) for gpu in job.gpus),
    )
    if venv is not None:
        env.update(with_venv(env, venv))
    env.update(platform or {})
    return env


def with_venv(env: Mapping[str, str], venv: Path) -> dict[str, str]:
    """PATH and VIRTUAL_ENV for a virtual environment, its ``bin`` first on the PATH."""
    path = env.get("PATH", os.defpath)
    return {"PATH": f"{venv / 'bin'}{os.pathsep}{path}", "VIRTUAL_ENV": str(venv)}


def parameters_document(parameters: Mapping[str, Any]) -> bytes:
    """The run's parameters as a YAML document (written as JSON, which YAML parsers read)."""
    return msgspec.json.format(msgspec.json.encode(dict(parameters)), indent=2) + b"\n"
