"""A fake ``pynvml`` (``nvidia-ml-py``): the NVML calls runplane makes, answered from a JSON file.

The file (``$RUNPLANE_FAKE_NVML``) is read at every call, so a test changes the machine while
an agent runs: ``tests.fakes.pynvml.machine`` writes it. Its shape::

    {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "uuid": "GPU-...",
               "pci_bus_id": "00000000:18:00.0", "util": 0, "memory_used_mib": 0,
               "power_mw": 0, "ecc_uncorrectable": 0, "retired_pages_pending": false,
               "lost": false}, ...],
     "xids": [{"gpu": 3, "xid": 79}, ...]}

``xids`` are delivered by ``nvmlEventSetWait`` once each, in order, to a set that registered
the GPU for ``nvmlEventTypeXidCriticalError``. A ``lost`` GPU answers every call with
``NVML_ERROR_GPU_IS_LOST``, as one fallen off the bus does. No file: NVML is not there
(``nvmlInit`` fails with ``NVML_ERROR_LIBRARY_NOT_FOUND``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

NVML_FEATURE_ENABLED = 1
NVML_FEATURE_DISABLED = 0
NVML_VOLATILE_ECC = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
nvmlEventTypeXidCriticalError = 0x8  # noqa: N816 - NVML's names

ENV = "RUNPLANE_FAKE_NVML"


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class NVMLError_GPUIsLost(NVMLError):  # noqa: N801 - NVML's name
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_GPU_IS_LOST)


@dataclass(frozen=True)
class _Handle:
    index: int


@dataclass
class _EventSet:
    gpus: set[int] = field(default_factory=set)
    delivered: int = 0


@dataclass(frozen=True)
class _Memory:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class _Pci:
    busId: str  # noqa: N815 - NVML's name


@dataclass(frozen=True)
class _Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _EventData:
    device: _Handle
    eventType: int  # noqa: N815
    eventData: int  # noqa: N815


def _machine() -> dict[str, Any]:
    path = os.environ.get(ENV)
    if not path or not os.path.exists(path):
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    with open(path) as file:
        machine: dict[str, Any] = json.load(file)
    return machine


def _gpu(handle: _Handle) -> dict[str, Any]:
    gpu: dict[str, Any] = _machine()["gpus"][handle.index]
    if gpu.get("lost"):
        raise NVMLError_GPUIsLost
    return gpu


def nvmlInit() -> None:  # noqa: N802
    _machine()


def nvmlShutdown() -> None:  # noqa: N802
    pass


def nvmlDeviceGetCount() -> int:  # noqa: N802
    return len(_machine()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:  # noqa: N802
    handle = _Handle(index)
    _gpu(handle)
    return handle


def nvmlDeviceGetName(handle: _Handle) -> str:  # noqa: N802
    return str(_gpu(handle)["name"])


def nvmlDeviceGetUUID(handle: _Handle) -> str:  # noqa: N802
    return str(_gpu(handle)["uuid"])


def nvmlDeviceGetPciInfo(handle: _Handle) -> _Pci:  # noqa: N802
    return _Pci(busId=str(_gpu(handle).get("pci_bus_id", f"00000000:{handle.index:02x}:00.0")))


def nvmlDeviceGetMemoryInfo(handle: _Handle) -> _Memory:  # noqa: N802
    gpu = _gpu(handle)
    total, used = int(gpu["memory_mib"]) << 20, int(gpu.get("memory_used_mib", 0)) << 20
    return _Memory(total=total, used=used, free=total - used)


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> _Utilization:  # noqa: N802
    return _Utilization(gpu=int(_gpu(handle).get("util", 0)), memory=0)


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:  # noqa: N802
    return int(_gpu(handle).get("power_mw", 0))


def nvmlDeviceGetTotalEccErrors(handle: _Handle, error_type: int, counter_type: int) -> int:  # noqa: N802
    del counter_type
    if error_type != NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(_gpu(handle).get("ecc_uncorrectable", 0))


def nvmlDeviceGetRetiredPagesPendingStatus(handle: _Handle) -> int:  # noqa: N802
    pending = _gpu(handle).get("retired_pages_pending", False)
    return NVML_FEATURE_ENABLED if pending else NVML_FEATURE_DISABLED


def nvmlEventSetCreate() -> _EventSet:  # noqa: N802
    return _EventSet()


def nvmlDeviceRegisterEvents(handle: _Handle, types: int, events: _EventSet) -> None:  # noqa: N802
    if types & nvmlEventTypeXidCriticalError:
        events.gpus.add(handle.index)


def nvmlEventSetFree(events: _EventSet) -> None:  # noqa: N802
    events.gpus.clear()


def nvmlEventSetWait(events: _EventSet, timeout_ms: int) -> _EventData:  # noqa: N802
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        xids = [x for x in _machine().get("xids", []) if int(x["gpu"]) in events.gpus]
        if events.delivered < len(xids):
            xid = xids[events.delivered]
            events.delivered += 1
            return _EventData(
                _Handle(int(xid["gpu"])), nvmlEventTypeXidCriticalError, int(xid["xid"])
            )
        if time.monotonic() >= deadline:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        pause = min(0.05, max(deadline - time.monotonic(), 0))
        time.sleep(pause)  # allowed: NVML's own bounded wait, the fake polling its machine file


# --- for tests: the machine the fake describes ------------------------------------------------


def gpu(
    index: int, *, name: str = "NVIDIA H100 80GB HBM3", memory_mib: int = 81559
) -> dict[str, Any]:
    """A healthy GPU for ``machine``, with a UUID that names its index."""
    return {
        "name": name,
        "memory_mib": memory_mib,
        "uuid": f"GPU-fake{index:04d}-0000-0000-0000-000000000000",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "util": 0,
        "memory_used_mib": 0,
        "power_mw": 0,
    }


def machine(
    path: os.PathLike[str] | str,
    gpus: list[dict[str, Any]],
    xids: list[dict[str, int]] | None = None,
) -> None:
    """Write the machine the fake reports (atomically: an agent may be reading it)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as file:
        json.dump({"gpus": gpus, "xids": xids or []}, file)
    os.replace(tmp, path)
