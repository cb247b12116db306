"""The GPU suite: runplane on a machine with NVIDIA GPUs, found the way a node-agent finds them.

Every test under ``tests/gpu`` is marked ``gpu`` and is skipped, with the reason, where
``nvidia-smi -L`` lists no GPU or NVML finds none (CI, laptops): ``pytest`` over the whole tree
passes there. Run it on a GPU machine with ``pytest tests/gpu`` (``tests/gpu/device.sh`` does,
offline).

The stack here has one node-agent and no ``RUNPLANE_GPUS``: it finds the machine's GPUs through
NVML, as in production, samples them every second and serves its gauges on the metrics port
the stack chose for it (``LocalStack.metrics_url``).
Runs still going at the end of a test are stopped, and waited for, before the stack goes down,
so no test leaves a process on a GPU.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cli.stack import LocalStack, StackConfig
from tests.e2e.driver import Driver, driving, stack_up
from tests.gpu import nvidia

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.path.is_relative_to(HERE)]
    if not ours:
        return
    reason = nvidia.no_gpu_reason() or nvidia.nvml_missing_reason()
    for item in ours:
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def torch_on_gpu() -> None:
    """Skips the test unless the ranks' ``python3`` imports torch and sees CUDA."""
    reason = nvidia.torch_missing_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    # Nothing may tell the node-agent what it has: it must ask NVML.
    monkeypatch.delenv("RUNPLANE_GPUS", raising=False)
    monkeypatch.delenv("RUNPLANE_GPU_TYPE", raising=False)
    monkeypatch.delenv("RUNPLANE_GPU_UUIDS", raising=False)
    telemetry = {"RUNPLANE_GPU_SAMPLE_INTERVAL_S": "1"}
    config = StackConfig(nodes=1, gpus_per_node=None, grace_period_s=2.0, extra_env=telemetry)
    with stack_up(tmp_path / "stack", config) as local:
        yield local


@pytest.fixture
async def driver(stack: LocalStack) -> AsyncIterator[Driver]:
    async with driving(stack, 1, stop_all=True) as drive:
        yield drive
