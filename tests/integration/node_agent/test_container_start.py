"""A container node-agent that cannot run ranks refuses to start, before it registers, with
one line saying what to install: no engine, or real GPUs and no CDI spec for them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.integration.node_agent.conftest import AgentFactory


def _fake_nvidia_smi(bin_dir: Path) -> None:
    """An ``nvidia-smi`` that lists one H100, as a node with a real GPU would."""
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


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
    _fake_nvidia_smi(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    agent = make_agent(
        env=env,
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
