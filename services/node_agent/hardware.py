"""What a node has: its GPUs as NVML reports them, named the way runs ask for them.

``gpu_type_of`` and ``simulated`` are pure; ``detect_gpus`` asks NVML (``nvidia-ml-py``'s
``pynvml``), imported there and only there, so a CPU node and every other service never load it.
No NVML (no driver, no library, no GPU) is an answer, no GPUs, not an error.

Simulated GPUs (``RUNPLANE_GPUS`` on a machine NVML does not describe: the tests, the local
stack) get UUIDs that say so, ``GPU-simulated-<node>-<index>``, so nothing in the log mistakes
them for hardware to return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

#: Models recognised in an NVIDIA product name, longest first so "a100" wins over "a10".
_MODELS = ("gh200", "h200", "h100", "a100", "a10g", "a800", "h800", "l40s", "l40", "a40")
_MODELS_SHORT = ("v100", "a10", "t4", "l4", "p100", "k80", "a30", "a6000")
SIMULATED_PREFIX = "GPU-simulated-"
UNREADABLE_PREFIX = "GPU-unreadable-"


@dataclass(frozen=True)
class Gpu:
    """One physical GPU: its index on the node (``CUDA_VISIBLE_DEVICES``), NVIDIA's product
    name, its memory, and the identities that outlive a reboot (UUID) or a swap (PCI bus id)."""

    index: int
    name: str
    memory_mib: int
    uuid: str
    pci_bus_id: str


class Gpus(NamedTuple):
    gpus: int
    gpu_type: str | None
    devices: tuple[Gpu, ...] = ()

    @property
    def uuids(self) -> list[str]:
        return [gpu.uuid for gpu in self.devices]


def gpu_type_of(name: str, memory_mib: int | None) -> str:
    """``a100_80gb`` for "NVIDIA A100-SXM4-80GB" with 81920 MiB; the lower-cased name, with
    ``_`` for anything but letters and digits, for a model it does not know."""
    lowered = name.lower()
    for model in (*_MODELS, *_MODELS_SHORT):
        if re.search(rf"(?<![a-z0-9]){model}(?![a-z0-9])", lowered):
            if memory_mib is None:
                return model
            return f"{model}_{round(memory_mib / 1024)}gb"
    return re.sub(r"[^a-z0-9]+", "_", lowered.removeprefix("nvidia")).strip("_") or "gpu"


def simulated(node: str, count: int) -> list[str]:
    """The UUIDs of ``count`` simulated GPUs of ``node``: unique in a cluster, marked as such."""
    return [f"{SIMULATED_PREFIX}{node}-{index}" for index in range(count)]


def unreadable(index: int) -> Gpu:
    """A GPU NVML counts but cannot describe (lost, fallen off the bus): kept in its place so
    the others keep their indices, with a UUID that says so; the health watcher fails it."""
    return Gpu(
        index=index, name="", memory_mib=0, uuid=f"{UNREADABLE_PREFIX}{index}", pci_bus_id=""
    )


def of_devices(devices: list[Gpu]) -> Gpus:
    """The node's GPUs, typed by the first readable one (a node's GPUs are of one kind)."""
    readable = [gpu for gpu in devices if not gpu.uuid.startswith(UNREADABLE_PREFIX)]
    if not readable:
        return Gpus(0, None)
    first = readable[0]
    return Gpus(len(devices), gpu_type_of(first.name, first.memory_mib), tuple(devices))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older bindings return bytes


def describe(nvml: Any, index: int) -> Gpu:
    """GPU ``index`` as NVML describes it (``nvml`` is the ``pynvml`` module, initialised)."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return Gpu(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_mib=int(memory.total) // (1024 * 1024),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=_text(nvml.nvmlDeviceGetPciInfo(handle).busId),
    )


def detect_gpus() -> Gpus:
    """The GPUs of this machine by NVML; none where NVML is missing or fails."""
    try:
        import pynvml  # noqa: PLC0415 - a CPU node, and every other service, never loads it
    except ImportError:
        return Gpus(0, None)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return Gpus(0, None)
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                devices.append(describe(pynvml, index))
            except pynvml.NVMLError:
                devices.append(unreadable(index))
        return of_devices(devices)
    except pynvml.NVMLError:
        return Gpus(0, None)
    finally:
        pynvml.nvmlShutdown()
