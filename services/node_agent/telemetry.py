"""How busy the node's GPUs are: NVML sampled every few seconds, for gauges and per rank.

``Telemetry`` keeps the latest sample of each GPU (the Prometheus gauges, named after NVIDIA's
DCGM exporter: ``DCGM_FI_DEV_GPU_UTIL`` in %, ``DCGM_FI_DEV_FB_USED`` in MiB,
``DCGM_FI_DEV_POWER_USAGE`` in W) and, for each rank from ``track`` to ``finish``, the mean
utilization of its GPUs over the samples taken meanwhile and their peak memory: what
``rank.exited`` carries to the log. A rank no sample saw (shorter than one interval, simulated
GPUs) has no summary. Thread-safe: ``Sampler.run`` records from its own thread (NVML blocks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class GpuSample(NamedTuple):
    gpu: int
    utilization: int  # % of the sample period a kernel ran
    memory_used_mib: int
    power_w: float


class Usage(NamedTuple):
    """A rank's GPUs over its life: mean utilization (%) and peak memory used (MiB, of one)."""

    utilization: int
    memory_peak_mib: int


@dataclass
class _Tracked:
    gpus: frozenset[int]
    util_sum: int = 0
    samples: int = 0
    memory_peak_mib: int = 0


@dataclass
class Telemetry:
    node: str
    uuids: list[str]
    model: str = ""
    latest: dict[int, GpuSample] = field(default_factory=dict)
    _ranks: dict[Hashable, _Tracked] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, key: Hashable, gpus: Iterable[int]) -> None:
        with self._lock:
            self._ranks.setdefault(key, _Tracked(frozenset(gpus)))

    def finish(self, key: Hashable) -> Usage | None:
        with self._lock:
            tracked = self._ranks.pop(key, None)
        if tracked is None or tracked.samples == 0:
            return None
        return Usage(round(tracked.util_sum / tracked.samples), tracked.memory_peak_mib)

    def record(self, samples: Iterable[GpuSample]) -> None:
        with self._lock:
            for sample in samples:
                self.latest[sample.gpu] = sample
                for tracked in self._ranks.values():
                    if sample.gpu in tracked.gpus:
                        tracked.util_sum += sample.utilization
                        tracked.samples += 1
                        tracked.memory_peak_mib = max(
                            tracked.memory_peak_mib, sample.memory_used_mib
                        )

    def exposition(self) -> str:
        """The gauges in Prometheus' text format, one series per GPU."""
        with self._lock:
            latest = sorted(self.latest.values())
        lines: list[str] = []
        for name, doc, value in _GAUGES:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
            for sample in latest:
                labels = self._labels(sample.gpu)
                lines.append(f"{name}{{{labels}}} {value(sample)}")
        return "\n".join(lines) + "\n"

    def _labels(self, gpu: int) -> str:
        uuid = self.uuids[gpu] if gpu < len(self.uuids) else ""
        pairs = {"gpu": str(gpu), "UUID": uuid, "Hostname": self.node, "modelName": self.model}
        return ",".join(f'{key}="{_escape(value)}"' for key, value in pairs.items())


_GAUGES: list[tuple[str, str, Callable[[GpuSample], object]]] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda s: s.utilization),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", lambda s: s.memory_used_mib),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda s: s.power_w),
]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample(nvml: Any, gpus: int) -> list[GpuSample]:
    """One sample of each GPU NVML answers for (a lost one is the health watcher's concern)."""
    samples = []
    for index in range(gpus):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).used) // (1024 * 1024)
            power = int(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000  # mW
        except nvml.NVMLError:
            continue
        samples.append(GpuSample(index, utilization, memory, power))
    return samples


class Sampler:
    """Samples every ``interval_s`` into ``telemetry`` until ``stopping`` is set."""

    def __init__(self, telemetry: Telemetry, interval_s: float) -> None:
        self.telemetry = telemetry
        self.interval_s = interval_s
        self.stopping = threading.Event()

    def run(self) -> None:
        import pynvml  # noqa: PLC0415 - only a node-agent with GPUs loads NVML

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return
        try:
            while not self.stopping.is_set():
                self.telemetry.record(sample(pynvml, len(self.telemetry.uuids)))
                self.stopping.wait(self.interval_s)
        finally:
            pynvml.nvmlShutdown()
