"""GPU figures from NVML, sampled in a background thread.

`GpuSampler` reads every GPU NVML sees each `interval` seconds: utilisation,
memory used and total, the memory this server's processes hold (front-end
and model workers), power draw and limit, temperature and SM clock. Reading
a figure a GPU does not support just leaves it out. Without NVML (no driver,
or `nvidia-ml-py` not installed) the sampler reports no GPUs and nothing
fails.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("framewire.gpu")


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment; None where NVML gave no value."""

    index: int
    name: str
    uuid: str
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    process_memory_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None


def load_nvml():
    """The pynvml module, initialised, or None where NVML cannot start."""
    try:
        import pynvml
    except ImportError:
        log.info("nvidia-ml-py is not installed: no GPU metrics")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses (no library, no driver)
        log.info("NVML is not available (%s): no GPU metrics", exc)
        return None
    return pynvml


@dataclass
class GpuSampler:
    """Samples every GPU NVML sees; `readings` is the latest sample."""

    nvml: object | None
    interval: float = 1.0
    pids: Callable[[], set[int]] = lambda: {os.getpid()}
    readings: list[GpuReading] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.nvml is not None

    def start(self) -> None:
        if self.nvml is None or self._thread is not None:
            return
        self.sample()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # a sampling failure must never take the server down
                log.exception("sampling the GPUs failed")

    def sample(self) -> list[GpuReading]:
        """Read every GPU now (also called by the sampler thread)."""
        if self.nvml is None:
            return []
        nvml = self.nvml
        ours = self.pids()
        readings = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            readings.append(GpuReading(
                index=index,
                name=_text(_read(nvml.nvmlDeviceGetName, handle)) or f"gpu{index}",
                uuid=_text(_read(nvml.nvmlDeviceGetUUID, handle)) or "",
                utilization_percent=_attr(_read(nvml.nvmlDeviceGetUtilizationRates, handle), "gpu"),
                memory_used_bytes=_attr(_read(nvml.nvmlDeviceGetMemoryInfo, handle), "used"),
                memory_total_bytes=_attr(_read(nvml.nvmlDeviceGetMemoryInfo, handle), "total"),
                process_memory_bytes=_process_memory(nvml, handle, ours),
                power_watts=_scaled(_read(nvml.nvmlDeviceGetPowerUsage, handle), 1e-3),
                power_limit_watts=_scaled(_read(nvml.nvmlDeviceGetEnforcedPowerLimit, handle), 1e-3),
                temperature_celsius=_scaled(_read(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU), 1),
                sm_clock_hertz=_scaled(_read(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM), 1e6),
            ))
        self.readings = readings
        return readings

    def reading_for(self, uuid: str | None = None, index: int | None = None) -> GpuReading | None:
        for reading in self.readings:
            if (uuid and reading.uuid == uuid) or (uuid is None and reading.index == index):
                return reading
        return None


def _read(fn, *args):
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and friends: the figure is left out
        return None


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr(value, name: str):
    return None if value is None else getattr(value, name, None)


def _scaled(value, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def _process_memory(nvml, handle, pids: set[int]) -> int | None:
    """Device memory held by `pids`; None where NVML cannot say.

    In a container with its own PID namespace NVML lists the host's process
    ids, which match none of ours: when none of the listed processes is
    visible here, the figure is unknown (left out), not zero.
    """
    processes = _read(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
    if processes is None:
        return None
    if processes and not any(p.pid in pids or os.path.exists(f"/proc/{p.pid}") for p in processes):
        return None
    used = [p.usedGpuMemory for p in processes if p.pid in pids and p.usedGpuMemory is not None]
    return int(sum(used))
