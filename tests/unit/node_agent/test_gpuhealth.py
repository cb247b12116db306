"""The GPU watcher against the fake ``pynvml``: a critical Xid, uncorrectable ECC errors,
retired pages pending and a lost GPU each fail their GPU, once; an application's Xid does not."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.node_agent.gpuhealth import GpuFault, GpuWatcher
from tests.fakes import PATH_ENTRY
from tests.fakes import pynvml as fake
from tests.waiting import eventually

UUIDS = [fake.gpu(i)["uuid"] for i in range(4)]


@pytest.fixture
def nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.syspath_prepend(PATH_ENTRY)
    path = tmp_path / "nvml.json"
    monkeypatch.setenv(fake.ENV, str(path))
    fake.machine(path, [fake.gpu(i) for i in range(4)])
    yield path
    sys.modules.pop("pynvml", None)


@pytest.fixture
def watched(nvml: Path) -> Iterator[list[GpuFault]]:
    faults: list[GpuFault] = []
    watcher = GpuWatcher(UUIDS, poll_s=0.05)
    thread = threading.Thread(target=watcher.run, args=(faults.append,), daemon=True)
    thread.start()
    yield faults
    watcher.stopping.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


async def test_a_critical_xid_fails_its_gpu_once_and_an_application_xid_does_not(
    nvml: Path, watched: list[GpuFault]
) -> None:
    gpus = [fake.gpu(i) for i in range(4)]
    fake.machine(nvml, gpus, xids=[{"gpu": 1, "xid": 13}, {"gpu": 3, "xid": 79}])
    await eventually(lambda: watched, what="the Xid is seen")
    fake.machine(
        nvml, gpus, xids=[{"gpu": 1, "xid": 13}, {"gpu": 3, "xid": 79}, {"gpu": 3, "xid": 48}]
    )
    fake.machine(nvml, [{**gpus[0], "ecc_uncorrectable": 2}, *gpus[1:]])
    await eventually(lambda: len(watched) == 2, what="the ECC errors are seen")
    assert watched == [
        GpuFault(3, UUIDS[3], "Xid 79"),
        GpuFault(0, UUIDS[0], "uncorrectable ECC errors: 2"),
    ]


async def test_retired_pages_pending_and_a_lost_gpu_fail_theirs(
    nvml: Path, watched: list[GpuFault]
) -> None:
    gpus = [fake.gpu(i) for i in range(4)]
    gpus[1] = {**gpus[1], "retired_pages_pending": True}
    gpus[2] = {**gpus[2], "lost": True}
    fake.machine(nvml, gpus)
    await eventually(lambda: len(watched) == 2, what="both are seen")
    assert sorted(watched) == [
        GpuFault(1, UUIDS[1], "retired pages pending"),
        GpuFault(2, UUIDS[2], "GPU lost"),
    ]
