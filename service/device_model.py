"""One copy of a network on one device, with its batch preprocessing.

`DeviceModel.run(batch)` is everything that happens next to the device for
one batch: decode and preprocess (`pixels`), the forward pass in the
serving dtype and memory format, and the output checked by the task
handler. Both runners use it: the thread runner in the server process, the
worker process for each model it hosts.

On CUDA `prepare` runs on a side stream and records an event, so a batch
can be decoded and uploaded while the previous one computes; the forward
pass waits for the event. `forward_many` runs several prepared batches
(a worker's sub-batches of one model from several front ends) as one
forward pass and splits the output back. A CUDA out-of-memory error
splits the batch in halves and retries; only a single image that does not
fit fails. With `cuda_graphs`, warm-up captures a graph per batch-size
bucket.
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
    #: Rows in the forward pass that ran this batch (more than its own when
    #: it was merged with other batches); 0 when no forward ran.
    device_rows: int = 0
    #: How many batches that forward pass ran (1 when not merged; 0 when none ran).
    merged: int = 0


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
        self._graphed = False  # whether warm-up captured CUDA graphs (it does once)

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
        return self.forward_many([prepared])[0]

    def forward_many(self, prepared_list: list[Prepared]) -> list[BatchOutcome]:
        """Run several prepared batches as one forward pass over their
        concatenated inputs; one outcome per batch, in order, each holding
        outputs only for its own rows that decoded. A batch whose every row
        failed to decode takes no part (its outcome has no rows). An error
        of the forward pass (or of the model's output) is every batch's."""
        import torch

        started = time.perf_counter()
        parts = [p for p in prepared_list if p.rows and len(p.errors) < len(p.rows)]
        output = None
        if parts:
            current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
            for prepared in parts:
                if prepared.ready is not None:
                    current.wait_event(prepared.ready)
                    for tensor in prepared.inputs if isinstance(prepared.inputs, list) else [prepared.inputs]:
                        tensor.record_stream(current)
            with torch.inference_mode():
                if self.device.type == "cuda":
                    with torch.cuda.device(self.device):
                        output = self._forward_split(self._concat_inputs(parts))
                else:
                    output = self._forward_split(self._concat_inputs(parts))
        compute_seconds = time.perf_counter() - started
        device_rows = sum(len(p.rows) for p in parts)
        taking = {id(p) for p in parts}
        outcomes, offset = [], 0
        for prepared in prepared_list:
            if id(prepared) not in taking:
                outcomes.append(BatchOutcome(None, [], prepared.errors, prepared.seconds, 0.0))
                continue
            rows = prepared.rows
            keep = [i for i, r in enumerate(rows) if r not in prepared.errors]
            if len(parts) == 1 and len(keep) == len(rows):
                mine = output  # the whole output is this batch's: no copy
            else:
                mine = self.handler.select(output, [offset + i for i in keep])
            offset += len(rows)
            outcomes.append(BatchOutcome(mine, [rows[i] for i in keep], prepared.errors, prepared.seconds,
                                         compute_seconds, device_rows, len(parts)))
        return outcomes

    def _concat_inputs(self, parts: list[Prepared]):
        """The inputs of several prepared batches as one: stacked tensors
        concatenated along the batch dimension, lists of images joined."""
        import torch

        if len(parts) == 1:
            return parts[0].inputs
        if not self.handler.stacked:
            return [image for p in parts for image in p.inputs]
        return torch.cat([p.inputs for p in parts]).contiguous(memory_format=self.preprocessor.layout)

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
        network (blocking); with cuda_graphs, then capture the graphs (at
        the first warm-up only: a later one just runs its sizes, since a
        second capture would wrap the graphs in graphs). Returns the seconds
        each size took (a latency budget's prior)."""
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
        if self.settings.cuda_graphs and self.device.type == "cuda" and self.handler.stacked and not self._graphed:
            from .cuda_graphs import graph_module

            self._graphed = True
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
