"""A stand-in for the NVML module (pynvml), for machines without a GPU.

Only NVML is stood in for: it cannot run here. Everything that reads it
(framewire's sampler, metrics, status) is the real code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError_NotSupported(Exception):
    """Raised, as NVML does, for a figure a GPU does not report."""


@dataclass
class FakeGpu:
    name: str = "NVIDIA H200"
    uuid: str = "GPU-00000000-1111-2222-3333-444444444444"
    utilization: int = 87
    memory_used: int = 40 * 2**30
    memory_total: int = 141 * 2**30
    power_mw: int = 512_000
    power_limit_mw: int = 700_000
    temperature: int = 61
    sm_clock_mhz: int = 1980
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)
    unsupported: set[str] = field(default_factory=set)


class FakeNvml:
    """The pynvml functions framewire calls, answering from FakeGpu records."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, gpus: list[FakeGpu] | None = None):
        self.gpus = gpus if gpus is not None else [FakeGpu(processes=[(os.getpid(), 3 * 2**30)])]
        self.calls = 0

    def _gpu(self, handle, figure: str) -> FakeGpu:
        self.calls += 1
        gpu = self.gpus[handle]
        if figure in gpu.unsupported:
            raise NVMLError_NotSupported(figure)
        return gpu

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return self._gpu(handle, "name").name

    def nvmlDeviceGetUUID(self, handle):
        return self._gpu(handle, "uuid").uuid

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._gpu(handle, "utilization").utilization, memory=30)

    def nvmlDeviceGetMemoryInfo(self, handle):
        gpu = self._gpu(handle, "memory")
        return SimpleNamespace(used=gpu.memory_used, total=gpu.memory_total, free=gpu.memory_total - gpu.memory_used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._gpu(handle, "processes").processes]

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._gpu(handle, "power").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._gpu(handle, "power_limit").power_limit_mw

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return self._gpu(handle, "temperature").temperature

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return self._gpu(handle, "clock").sm_clock_mhz
