"""Watching the node's GPUs through NVML: what makes a GPU failed, said once per GPU.

A GPU fails on (DCGM's health watches, and what Slurm sites drain a node for):
- a critical Xid event (``nvmlEventTypeXidCriticalError`` on an ``nvmlEventSet``), but for
  the Xids a program causes on a healthy GPU (``APPLICATION_XIDS``: an illegal address, a
  rank killed mid-kernel): those end the program, not the GPU;
- uncorrectable (volatile) ECC errors;
- retired pages pending (the GPU needs a reset before its memory can be trusted);
- the GPU lost (``NVML_ERROR_GPU_IS_LOST``: fallen off the bus, Xid 79's aftermath).

``check`` is a function of what NVML answers; ``GpuWatcher.run`` is the thread that asks (NVML
calls block), handing each fault to ``report`` once. ``pynvml`` is imported by the thread only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

#: Xids a program causes on a healthy GPU (NVIDIA's Xid catalogue: 13 graphics engine
#: exception, 31 MMU fault, 43 GPU stopped processing, 45 preemptive cleanup, 68/69 video and
#: graphics class errors): the rank fails by itself, the GPU is not at fault.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 69})
_WAIT_MS = 500  # one nvmlEventSetWait: how long a stop may wait for the thread


class GpuFault(NamedTuple):
    gpu: int
    uuid: str
    error: str  # "Xid 79", "uncorrectable ECC errors: 2", "retired pages pending", "GPU lost"


def check(nvml: Any, index: int) -> str | None:
    """What is wrong with GPU ``index`` now, by the conditions NVML can be polled for; None
    when nothing is (or NVML cannot say: a GPU without ECC, an older driver)."""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        ecc = _supported(
            nvml,
            lambda: nvml.nvmlDeviceGetTotalEccErrors(
                handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
            ),
        )
        if ecc:
            return f"uncorrectable ECC errors: {ecc}"
        pending = _supported(nvml, lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
        if pending == nvml.NVML_FEATURE_ENABLED:
            return "retired pages pending"
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) == nvml.NVML_ERROR_GPU_IS_LOST:
            return "GPU lost"
    return None


def _supported(nvml: Any, ask: Callable[[], int]) -> int | None:
    try:
        return ask()
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) == nvml.NVML_ERROR_GPU_IS_LOST:
            raise
        return None  # not supported here, or no permission: nothing to say


class GpuWatcher:
    """The node's GPUs, by index and UUID, watched every ``poll_s`` and on every Xid."""

    def __init__(self, uuids: list[str], poll_s: float) -> None:
        self.uuids = uuids
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.failed: set[int] = set()

    def run(self, report: Callable[[GpuFault], None]) -> None:
        """Until ``stopping`` is set; NVML missing or failing to start ends it quietly (the node
        registered its GPUs by NVML, so that is a node whose driver went away: each GPU is
        then reported lost by the poll of a later start)."""
        import pynvml  # noqa: PLC0415 - only a node-agent watching GPUs loads NVML

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return
        try:
            events = self._register(pynvml)
            next_poll = 0.0
            while not self.stopping.is_set():
                if time.monotonic() >= next_poll:
                    for index in range(len(self.uuids)):
                        if index not in self.failed and (error := check(pynvml, index)):
                            self._fail(report, index, error)
                    next_poll = time.monotonic() + self.poll_s
                if events is None:
                    self.stopping.wait(min(self.poll_s, _WAIT_MS / 1000))
                    continue
                try:
                    data = pynvml.nvmlEventSetWait(events, _WAIT_MS)
                except pynvml.NVMLError:
                    continue  # a timeout, mostly; a lost GPU shows in the next poll
                xid = int(data.eventData)
                gpu = self._index_of(pynvml, data.device)
                if gpu is not None and xid not in APPLICATION_XIDS and gpu not in self.failed:
                    self._fail(report, gpu, f"Xid {xid}")
        finally:
            pynvml.nvmlShutdown()

    def _register(self, nvml: Any) -> Any:
        """An event set with every GPU that can report critical Xids; None if none can."""
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            return None
        registered = False
        for index in range(len(self.uuids)):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered = True
            except nvml.NVMLError:
                continue  # not supported on this GPU, or lost already (the poll says so)
        return events if registered else None

    def _index_of(self, nvml: Any, device: Any) -> int | None:
        try:
            uuid = nvml.nvmlDeviceGetUUID(device)
        except nvml.NVMLError:
            return None
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        return self.uuids.index(uuid) if uuid in self.uuids else None

    def _fail(self, report: Callable[[GpuFault], None], index: int, error: str) -> None:
        self.failed.add(index)
        report(GpuFault(index, self.uuids[index], error))
