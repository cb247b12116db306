"""What a container node-agent checks before it registers its node: its engine is there, and
real GPUs can reach containers (a CDI spec: ``cdi``). A node that fails either would take work
it cannot run, so the agent refuses to start, with one line saying what to install."""

from __future__ import annotations

import shutil

from services.node_agent.container import cdi
from services.node_agent.hardware import detect_gpus
from services.node_agent.settings import NodeAgentSettings


def problem(settings: NodeAgentSettings) -> str | None:
    """Why this node cannot run ranks in containers, or None."""
    engine = settings.container_engine
    if shutil.which(engine) is None:
        return (
            f"the container executor runs {engine!r}, which is not installed here: install "
            "podman (apt-get install podman runc), or name it with RUNPLANE_CONTAINER_ENGINE"
        )
    dirs = settings.container_cdi_dirs
    return cdi.problem(detect_gpus().gpus, cdi.find(dirs), dirs)
