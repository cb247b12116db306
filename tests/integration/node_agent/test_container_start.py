"""A container node-agent that cannot run ranks refuses to start, before it registers, with
one line saying what to install: no engine, or real GPUs and no CDI spec for them."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fakes import PATH_ENTRY
from tests.fakes import pynvml as fake
from tests.integration.node_agent.conftest import AgentFactory


def _one_real_gpu(tmp_path: Path) -> dict[str, str]:
    """The environment of an agent whose NVML finds one H100, as a node with a real GPU
    would (NVML faked at the library boundary: ``tests/fakes/pynvml``)."""
    machine = tmp_path / "nvml.json"
    fake.machine(machine, [fake.gpu(0)])
    path = os.pathsep.join(filter(None, [PATH_ENTRY, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, fake.ENV: str(machine)}


async def test_an_agent_without_its_engine_refuses_to_start(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = make_agent(executor="container", container_engine="/nonexistent/podman")
    await agent.start()
    assert agent.proc is not None
    assert await agent.proc.wait() == 2
    assert "apt-get install podman" in agent.output()
    assert "node.registered" not in agent.output()


async def test_real_gpus_without_a_cdi_spec_refuse_to_start_naming_the_toolkit(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = make_agent(
        env=_one_real_gpu(tmp_path),
        executor="container",
        container_engine="true",
        container_cdi_dirs=f'["{tmp_path / "cdi"}"]',
    )
    await agent.start()
    assert agent.proc is not None
    assert await agent.proc.wait() == 2
    said = agent.output()
    assert "no CDI spec of kind nvidia.com/gpu" in said
    assert "nvidia-ctk cdi generate" in said
