"""``detect_gpus`` on real hardware: it finds what ``nvidia-smi -L`` lists, by a name runs can
ask for (``h200_140gb``)."""

from __future__ import annotations

import re

from services.node_agent.hardware import detect_gpus
from tests.gpu import nvidia


def test_detect_gpus_finds_every_gpu_nvidia_smi_lists() -> None:
    listed = nvidia.listed_gpus()
    found = detect_gpus()
    assert found.gpus == len(listed), listed
    assert found.gpu_type is not None
    # A model hardware.py knows, with its memory: an unknown model fails here, on purpose.
    assert re.fullmatch(r"[a-z0-9]+_\d+gb", found.gpu_type), found.gpu_type
    model = found.gpu_type.split("_")[0]
    assert all(model in line.lower() for line in listed), (model, listed)
