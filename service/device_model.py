"""One copy of a network on one device, with its batch preprocessing.

`DeviceModel.run(batch)` is everything that happens next to the device for
one batch: decode and preprocess (`pixels`), the forward pass in the
serving dtype and memory format, and the output checked by the task
handler. Both runners use it: the thread runner in the server process, the
worker process for each model it hosts.

On CUDA `prepare` runs on a side stream and records an event, so a batch
can be decoded and uploaded while the previous one computes; the forward
pass waits for the event. A CUDA out-of-memory error splits the batch in
halves and retries; only a single image that does not fit fails. With
`cuda_graphs`, warm-up captures a graph per batch-size bucket.
"""

from __future__ import annotations

import io
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LimitExceededError, ServiceError
from .payloads import BatchInput
from .pixels import BatchPreprocessor, Prepared
from .decode import EncodedImage

log = logging.getLogger("framewire.runner")


@dataclass
class BatchOutcome:
    """What a batch gave: the handler's `output` for `rows` (in that order),
    the rows that failed, and where the time went."""

    output: Any
    rows: list[int]
    errors: dict[int, ServiceError] = field(default_factory=dict)
    preprocess_seconds: float = 0.0
    compute_seconds: float = 0.0


class DeviceModel:
    """A network placed on `settings.device` in `settings.dtype`, with the
    preprocessing of its task handler; see the module doc."""

    def __init__(self, module, handler, settings, pool: Executor, *, name: str, jpeg_decode=None):
        import torch

        self.name = name
        self.handler = handler
        self.settings = settings
        self.device = torch.device(settings.device)
        self.dtype = getattr(torch, settings.dtype)
        self.channels_last = settings.channels_last and handler.channels_last
        module = module.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.preprocessor = BatchPreprocessor(
            handler.spec, stacked=handler.stacked, device=self.device, dtype=self.dtype,
            channels_last=self.channels_last, pool=pool, decoder=settings.resolved_decoder,
            jpeg_draft=settings.jpeg_draft, max_pixels=settings.max_image_pixels, jpeg_decode=jpeg_decode,
        )
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def device_label(self) -> str:
        return str(self.device)

    def run(self, batch: BatchInput) -> BatchOutcome:
        """Prepare and run one batch (blocking)."""
        return self.forward(self.prepare(batch))

    def prepare(self, batch: BatchInput) -> Prepared:
        """Decode and preprocess a batch on the device (on CUDA, on a side stream)."""
        import torch

        started = time.perf_counter()
        if self._stream is None:
            prepared = self.preprocessor.prepare(batch)
        else:
            with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                prepared = self.preprocessor.prepare(batch)
                prepared.ready = torch.cuda.Event()
                prepared.ready.record(self._stream)
        prepared.seconds = time.perf_counter() - started
        return prepared

    def forward(self, prepared: Prepared) -> BatchOutcome:
        """Run a prepared batch; the outcome holds outputs only for rows that decoded."""
        import torch

        started = time.perf_counter()
        rows = prepared.rows
        output = None
        if rows and len(prepared.errors) < len(rows):
            if prepared.ready is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(prepared.ready)
                for tensor in prepared.inputs if isinstance(prepared.inputs, list) else [prepared.inputs]:
                    tensor.record_stream(current)
            with torch.inference_mode():
                if self.device.type == "cuda":
                    with torch.cuda.device(self.device):
                        output = self._forward_split(prepared.inputs)
                else:
                    output = self._forward_split(prepared.inputs)
            if any(r in prepared.errors for r in rows):
                keep = [i for i, r in enumerate(rows) if r not in prepared.errors]
                output, rows = self.handler.select(output, keep), [rows[i] for i in keep]
        else:
            rows = []
        return BatchOutcome(output, rows, prepared.errors, prepared.seconds,
                            time.perf_counter() - started)

    def _forward_split(self, inputs):
        import torch

        try:
            out = self.module(inputs)
        except torch.OutOfMemoryError:
            size = len(inputs)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if size == 1:
                raise LimitExceededError(
                    f"model {self.name} ran out of device memory on a single image; send a "
                    "smaller image or give the model a larger device"
                ) from None
            half = size // 2
            log.warning("%s: out of memory at batch %d; splitting into %d + %d", self.name, size, half, size - half)
            return self.handler.concat([self._forward_split(inputs[:half]), self._forward_split(inputs[half:])])
        return self.handler.model_output(out, len(inputs))

    def warm_up(self, sizes: list[int]) -> dict[int, float]:
        """Run each batch size once through decode, preprocessing and the
        network (blocking); with cuda_graphs, then capture the graphs.
        Returns the seconds each size took (a latency budget's prior)."""
        if not sizes:
            return {}
        sample = warmup_image(self.handler.warmup_shape())
        seconds = {}
        for size in sizes:
            batch = BatchInput(size, encoded=[EncodedImage(i, sample.data, "JPEG", sample.height, sample.width)
                                              for i in range(size)])
            began = time.perf_counter()
            self.run(batch)
            seconds[size] = time.perf_counter() - began
        if self.settings.cuda_graphs and self.device.type == "cuda" and self.handler.stacked:
            from .cuda_graphs import graph_module

            self.module = graph_module(
                self.module, device=self.device, dtype=self.dtype, sample_shape=self.handler.input_shape,
                buckets=sizes, channels_last=self.channels_last, name=self.name,
            )
        log.info("%s warmed up at batch sizes %s on %s", self.name, sizes, self.device)
        return seconds


@dataclass(frozen=True)
class _Sample:
    data: bytes
    height: int
    width: int


def warmup_image(shape: tuple[int, int, int]) -> _Sample:
    """A noise JPEG of (C, H, W) `shape`'s size, to warm the decode path with."""
    from PIL import Image

    _, height, width = shape
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return _Sample(buf.getvalue(), height, width)


def load_network(settings, *, trust=None, data: bytes | None = None):
    """Load the artifact `settings` names (the framewire loader, with its
    checks); `data` is its bytes when they were read already."""
    from framewire.exporter import load_model

    return load_model(settings.artifact, max_bytes=settings.max_artifact_bytes, trust=trust, data=data)


def trust_policy(settings):
    """The signature policy of `settings` (None when no keys are trusted)."""
    if not settings.trusted_keys:
        return None
    from framewire.exporter.signing import TrustPolicy

    return TrustPolicy.from_directory(settings.trusted_keys, settings.require_signed)
