"""GPUs as NVML describes them (the fake ``pynvml`` at the library boundary), named the way
runs ask for them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.node_agent.hardware import SIMULATED_PREFIX, Gpus, detect_gpus, gpu_type_of, simulated
from services.node_agent.settings import NodeAgentSettings
from tests.fakes import PATH_ENTRY


@pytest.fixture
def nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake ``pynvml`` in place of the real one; the machine it describes is the file."""
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.syspath_prepend(PATH_ENTRY)
    path = tmp_path / "nvml.json"
    monkeypatch.setenv("RUNPLANE_FAKE_NVML", str(path))
    yield path
    sys.modules.pop("pynvml", None)


@pytest.mark.parametrize(
    ("name", "memory", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", 81920, "a100_80gb"),
        ("NVIDIA A100-PCIE-40GB", 40960, "a100_40gb"),
        ("NVIDIA H100 80GB HBM3", 81559, "h100_80gb"),
        ("NVIDIA A10G", 23028, "a10g_22gb"),
        ("Tesla V100-SXM2-16GB", 16384, "v100_16gb"),
        ("NVIDIA L4", None, "l4"),
        ("NVIDIA GeForce RTX 4090", 24564, "geforce_rtx_4090"),
    ],
)
def test_gpu_type_of(name: str, memory: int | None, expected: str) -> None:
    assert gpu_type_of(name, memory) == expected


def test_detect_gpus_asks_nvml_for_every_gpu(nvml: Path) -> None:
    from tests.fakes import pynvml  # noqa: PLC0415 - the fake's helpers, once on the path

    pynvml.machine(nvml, [pynvml.gpu(i) for i in range(4)])
    found = detect_gpus()
    assert (found.gpus, found.gpu_type) == (4, "h100_80gb")
    assert [gpu.index for gpu in found.devices] == [0, 1, 2, 3]
    assert found.uuids == [pynvml.gpu(i)["uuid"] for i in range(4)]
    assert found.devices[1].pci_bus_id == "00000000:19:00.0"
    assert found.devices[0].memory_mib == 81559


def test_no_nvml_is_no_gpus(nvml: Path) -> None:
    assert not nvml.exists()  # the fake's "library not found"
    assert detect_gpus() == Gpus(0, None)


def test_a_lost_gpu_at_start_up_keeps_its_place_and_says_so(nvml: Path) -> None:
    from tests.fakes import pynvml  # noqa: PLC0415

    pynvml.machine(nvml, [pynvml.gpu(0), {**pynvml.gpu(1), "lost": True}, pynvml.gpu(2)])
    found = detect_gpus()
    assert (found.gpus, found.gpu_type) == (3, "h100_80gb")
    assert found.uuids == [pynvml.gpu(0)["uuid"], "GPU-unreadable-1", pynvml.gpu(2)["uuid"]]
    pynvml.machine(nvml, [{**pynvml.gpu(0), "lost": True}])
    assert detect_gpus() == Gpus(0, None)  # nothing readable: nothing to place on


def test_the_agent_registers_nvml_uuids_or_simulated_ones(
    nvml: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.fakes import pynvml  # noqa: PLC0415

    monkeypatch.delenv("RUNPLANE_GPUS", raising=False)
    monkeypatch.delenv("RUNPLANE_GPU_TYPE", raising=False)
    pynvml.machine(nvml, [pynvml.gpu(i) for i in range(2)])
    real = NodeAgentSettings(node="n1", data_dir=tmp_path)
    assert real.uuids == [pynvml.gpu(0)["uuid"], pynvml.gpu(1)["uuid"]]
    assert real.gpu_type == "h100_80gb"
    sim = NodeAgentSettings(node="n1", gpus=3, data_dir=tmp_path)
    assert sim.uuids == simulated("n1", 3)
    assert all(uuid.startswith(SIMULATED_PREFIX) for uuid in sim.uuids)
    with pytest.raises(ValueError, match="names 1 GPUs, the node has 3"):
        NodeAgentSettings(node="n1", gpus=3, gpu_uuids=["GPU-x"], data_dir=tmp_path)
