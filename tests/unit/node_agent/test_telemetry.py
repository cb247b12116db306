"""GPU telemetry: NVML samples (the fake ``pynvml``) into gauges and per-rank summaries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.node_agent.telemetry import GpuSample, Telemetry, Usage, sample
from tests.fakes import PATH_ENTRY
from tests.fakes import pynvml as fake

UUIDS = [fake.gpu(i)["uuid"] for i in range(4)]


def test_a_rank_s_summary_is_the_mean_utilization_and_peak_memory_of_its_gpus() -> None:
    telemetry = Telemetry("n1", UUIDS, "h100_80gb")
    telemetry.track("a", [0, 1])
    telemetry.track("b", [2])
    telemetry.record([GpuSample(0, 80, 1000, 300.0), GpuSample(1, 60, 3000, 250.0)])
    telemetry.record([GpuSample(0, 100, 2000, 300.0), GpuSample(1, 40, 500, 250.0)])
    assert telemetry.finish("a") == Usage(utilization=70, memory_peak_mib=3000)
    assert telemetry.finish("b") is None  # no sample of its GPU
    assert telemetry.finish("a") is None  # taken once


def test_the_gauges_are_named_as_dcgm_s_with_a_series_per_gpu() -> None:
    telemetry = Telemetry("n1", UUIDS, "h100_80gb")
    telemetry.record([GpuSample(1, 55, 1234, 301.5), GpuSample(0, 5, 10, 70.0)])
    text = telemetry.exposition()
    labels = f'gpu="1",UUID="{UUIDS[1]}",Hostname="n1",modelName="h100_80gb"'
    assert f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} 55\n" in text
    assert f"DCGM_FI_DEV_FB_USED{{{labels}}} 1234\n" in text
    assert f"DCGM_FI_DEV_POWER_USAGE{{{labels}}} 301.5\n" in text
    assert "# TYPE DCGM_FI_DEV_GPU_UTIL gauge" in text
    assert text.index('gpu="0"') < text.index('gpu="1"')


def test_sample_asks_nvml_and_leaves_out_a_lost_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.syspath_prepend(PATH_ENTRY)
    path = tmp_path / "nvml.json"
    monkeypatch.setenv(fake.ENV, str(path))
    busy = {**fake.gpu(0), "util": 93, "memory_used_mib": 40960, "power_mw": 612_000}
    fake.machine(path, [busy, {**fake.gpu(1), "lost": True}])
    import pynvml  # noqa: PLC0415 - the fake, now first on the path

    assert sample(pynvml, 2) == [GpuSample(0, 93, 40960, 612.0)]
    sys.modules.pop("pynvml", None)
