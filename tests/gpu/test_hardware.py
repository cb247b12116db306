"""``detect_gpus`` on real hardware: NVML finds what ``nvidia-smi -L`` lists, the same GPUs by
UUID, by a name runs can ask for (``h200_140gb``)."""

from __future__ import annotations

import re

from services.node_agent.hardware import detect_gpus
from tests.gpu import nvidia


def test_nvml_finds_every_gpu_nvidia_smi_lists_by_uuid() -> None:
    listed = nvidia.listed_gpus()
    found = detect_gpus()
    assert found.gpus == len(listed), listed
    assert found.gpu_type is not None
    # A model hardware.py knows, with its memory: an unknown model fails here, on purpose.
    assert re.fullmatch(r"[a-z0-9]+_\d+gb", found.gpu_type), found.gpu_type
    model = found.gpu_type.split("_")[0]
    assert all(model in line.lower() for line in listed), (model, listed)
    uuids = [re.search(r"\(UUID: (GPU-[0-9a-f-]+)\)", line) for line in listed]
    assert found.uuids == [m.group(1) for m in uuids if m is not None], listed
    assert all(
        re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-9A-F]", gpu.pci_bus_id)
        for gpu in found.devices
    ), found.devices
