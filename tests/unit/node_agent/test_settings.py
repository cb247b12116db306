"""Node-agent settings from RUNPLANE_* variables, with the machine's facts as defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.node_agent.settings import NodeAgentSettings


@pytest.fixture(autouse=True)
def _no_outer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("RUNPLANE_"):
            monkeypatch.delenv(name)


def test_simulated_gpus_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPLANE_NODE", "gpu-7")
    monkeypatch.setenv("RUNPLANE_GPUS", "8")
    monkeypatch.setenv("RUNPLANE_GPU_TYPE", "a100_80gb")
    settings = NodeAgentSettings()
    assert (settings.node, settings.cluster, settings.gpu_count) == ("gpu-7", "local", 8)
    assert settings.gpu_type == "a100_80gb"
    assert settings.actor == "node-agent@gpu-7"
    assert settings.data_path == Path.home() / ".runplane" / "node-agent" / "gpu-7"
    assert (settings.grace_period_s, settings.heartbeat_interval_s) == (30, 2)
    assert settings.heartbeat_ttl_s == 10
    assert settings.cpus >= 1


def test_a_node_without_gpus_has_no_gpu_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPLANE_GPUS", "0")
    monkeypatch.setenv("RUNPLANE_GPU_TYPE", "a100_80gb")
    assert NodeAgentSettings().gpu_type is None


def test_gpus_of_no_known_kind_are_plain_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPLANE_GPUS", "4")
    monkeypatch.delenv("RUNPLANE_GPU_TYPE", raising=False)
    assert NodeAgentSettings().gpu_type == "gpu"


def test_the_heartbeat_beats_at_least_four_times_per_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNPLANE_GPUS", "0")
    assert NodeAgentSettings().beat_every_s == 2
    monkeypatch.setenv("RUNPLANE_HEARTBEAT_TTL_S", "3")
    assert NodeAgentSettings().beat_every_s == 0.75


def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPLANE_GPUS", "-1")
    with pytest.raises(ValidationError, match="gpus"):
        NodeAgentSettings()


def test_the_kubernetes_executor_and_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPLANE_GPUS", "8")
    monkeypatch.setenv("RUNPLANE_EXECUTOR", "kubernetes")
    monkeypatch.setenv("RUNPLANE_KUBE_NAMESPACE", "training")
    monkeypatch.setenv("RUNPLANE_KUBE_NODE_NAME", "ip-10-0-3-7")
    monkeypatch.setenv("RUNPLANE_KUBE_IMAGE_PULL_BACKOFF_S", "120")
    settings = NodeAgentSettings()
    assert (settings.executor, settings.kube_namespace) == ("kubernetes", "training")
    assert (settings.kube_node_name, settings.kube_image_pull_backoff_s) == ("ip-10-0-3-7", 120)
    assert (settings.kube_in_cluster, settings.kube_config, settings.kube_context) == (
        False, None, None,
    )  # fmt: skip
    monkeypatch.setenv("RUNPLANE_EXECUTOR", "slurm")
    with pytest.raises(ValidationError, match="executor"):
        NodeAgentSettings()
