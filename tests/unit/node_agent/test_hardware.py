"""GPUs as nvidia-smi lists them, named the way runs ask for them."""

from __future__ import annotations

import pytest

from services.node_agent.hardware import Gpus, gpu_type_of, parse_nvidia_smi


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


def test_parse_nvidia_smi_counts_the_gpus_and_names_the_first() -> None:
    output = "NVIDIA A100-SXM4-80GB, 81920\n" * 8
    assert parse_nvidia_smi(output) == Gpus(8, "a100_80gb")
    assert parse_nvidia_smi("") == Gpus(0, None)
    assert parse_nvidia_smi("NVIDIA L4, [N/A]\n") == Gpus(1, "l4")
