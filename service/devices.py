"""Choosing the devices models run on, with CPU fallback."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

from .config import ConfigError

log = logging.getLogger("framewire.devices")


@dataclass(frozen=True)
class DevicePlan:
    """Where models run and in what precision."""

    devices: tuple[str, ...]
    dtype: str
    fallback_reason: str = ""

    @property
    def on_cuda(self) -> bool:
        return self.devices[0].startswith("cuda")

    @property
    def label(self) -> str:
        return ",".join(self.devices)


def plan_devices(device: str, dtype: str) -> DevicePlan:
    """Resolve --device/--dtype. `auto` takes every visible GPU and falls back
    to the CPU (with the reason) when there is none or CUDA fails to start;
    an explicit `cuda` that cannot start is a ConfigError."""
    import torch

    if device == "cpu":
        return DevicePlan(("cpu",), _cpu_dtype(dtype))
    reason = ""
    gpus: tuple[str, ...] = ()
    try:
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            reason = "no CUDA device is visible"
        elif device.startswith("cuda:"):
            index = int(device.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise ConfigError(
                    f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
                )
            gpus = (device,)
        else:
            gpus = tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        for name in gpus:
            torch.zeros(1, device=name).add_(1)  # fails here if the driver or context cannot start
    except ConfigError:
        raise
    except Exception as exc:  # CUDA initialisation raises RuntimeError and friends
        reason = f"CUDA failed to start: {exc}"
        gpus = ()
    if gpus:
        return DevicePlan(gpus, "float16" if dtype == "auto" else dtype)
    if device != "auto":
        raise ConfigError(f"device={device!r}: {reason}; use --device auto (falls back to the CPU) or cpu")
    log.warning("running on the CPU: %s", reason)
    return DevicePlan(("cpu",), _cpu_dtype(dtype), reason)


def _cpu_dtype(dtype: str) -> str:
    if dtype == "float16":
        log.warning("float16 is slow or unsupported for many CPU kernels; running in float32")
        return "float32"
    return "float32" if dtype == "auto" else dtype


def describe_device(name: str) -> dict:
    """Name, description and memory figures for GetServerStatus."""
    if name == "cpu":
        return {"name": "cpu", "description": platform.processor() or platform.machine(), "total": 0, "allocated": 0}
    import torch

    index = int(name.split(":", 1)[1])
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    return {
        "name": name,
        "description": props.name,
        "total": int(props.total_memory),
        "allocated": int(torch.cuda.memory_allocated(index)),
        # NVML names GPUs "GPU-<uuid>"; CUDA's index can differ from NVML's
        # (CUDA_VISIBLE_DEVICES), the UUID cannot.
        "uuid": f"GPU-{uuid}" if uuid is not None else None,
        "index": index,
    }
