"""The in-process baselines, timed at each batch size so a benchmark can
report served throughput as a ratio of what this machine does without a
server:

* `measure`: the model alone on preprocessed tensors (same artifact,
  device, dtype and memory format as the server's runner);
* `measure_pipeline`: the same decode + preprocess + model work the server
  does per image, with the server's own code, in one process using every
  CPU (or decode and preprocessing alone, for the decode rows).
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
            points.append(_timed(lambda: module(x), batch, torch_device, min_seconds, min_batches))
    return points


def _timed(run_batch, batch: int, device, min_seconds: float, min_batches: int) -> BaselinePoint:
    """Run `run_batch` twice untimed, then at least `min_batches` times and `min_seconds`."""
    for _ in range(2):
        run_batch()
    _sync(device)
    count, start = 0, time.perf_counter()
    while count < min_batches or time.perf_counter() - start < min_seconds:
        run_batch()
        count += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    return BaselinePoint(batch, batch * count / elapsed, elapsed / count)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pipeline(artifact_path: str, images: list, *, device: str = "cpu", dtype: str = "float32",
                     jpeg_draft: bool = False, batch_sizes=(1, 2, 4, 8, 16, 32, 64), min_seconds: float = 3.0,
                     min_batches: int = 5, decode_only: bool = False) -> list[BaselinePoint]:
    """Images per second in-process doing the server's whole work per image at
    each batch size: the header check, batched decode and preprocessing
    (`service.pixels`, all CPUs decoding) and the model, on `device`, with
    the server's own code. `images` are protobuf Images (load_tests.inputs).
    With `decode_only`, the model is left out: decode and preprocessing alone."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from framewire.exporter import load_model
    from framewire.service.device_model import DeviceModel
    from framewire.service.api.native_messages import image_input
    from framewire.service.payloads import gather
    from framewire.service.tasks import task_handler
    from framewire.service.worker_settings import WorkerSettings

    loaded = load_model(artifact_path)
    handler = task_handler(loaded.artifact)
    settings = WorkerSettings(model_id="baseline", artifact=str(artifact_path), device=device, dtype=dtype,
                              jpeg_draft=jpeg_draft)
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="baseline-decode")
    model = DeviceModel(loaded.module, handler, settings, pool, name="baseline")
    inputs = [image_input(i, max_elements=10**9) for i in images]
    torch_device = torch.device(device)

    def one_batch(size: int) -> None:
        payloads = [handler.admit(inputs[i % len(inputs)], max_pixels=10**9, max_bytes=10**9)[0] for i in range(size)]
        prepared = model.prepare(gather(payloads))
        if decode_only:
            if prepared.ready is not None:
                prepared.ready.synchronize()
            return
        model.forward(prepared)

    try:
        with torch.inference_mode():
            return [_timed(lambda: one_batch(batch), batch, torch_device, min_seconds, min_batches)
                    for batch in batch_sizes]
    finally:
        pool.shutdown(wait=True)
