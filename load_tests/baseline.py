"""The in-process baseline: the served model run directly in torch.

Same artifact, same device, dtype and memory format as the server's runner,
timed at each batch size, so a benchmark can report served throughput as a
ratio of what the model alone does on this machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class BaselinePoint:
    batch_size: int
    images_per_second: float
    seconds_per_batch: float


def measure(artifact_path: str, *, device: str = "cpu", dtype: str = "float32", channels_last: bool = True,
            batch_sizes=(1, 2, 4, 8, 16, 32, 64), min_seconds: float = 3.0, min_batches: int = 5) -> list[BaselinePoint]:
    """Images per second of the bare model at each batch size."""
    import torch

    from framewire.exporter import load_model

    loaded = load_model(artifact_path)
    spec = loaded.artifact.input
    torch_device = torch.device(device)
    torch_dtype = getattr(torch, dtype)
    module = loaded.module.to(device=torch_device, dtype=torch_dtype)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    points = []
    for batch in batch_sizes:
        x = torch.randn(batch, spec.channels, spec.height, spec.width, device=torch_device).to(torch_dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(2):
                module(x)
            _sync(torch_device)
            count, start = 0, time.perf_counter()
            while count < min_batches or time.perf_counter() - start < min_seconds:
                module(x)
                count += 1
            _sync(torch_device)
            elapsed = time.perf_counter() - start
        points.append(BaselinePoint(batch, batch * count / elapsed, elapsed / count))
    return points


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
