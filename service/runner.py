"""Running batches on model instances: devices, dtype, staging, OOM splits.

One instance of the network per device by default (`instances_per_device`
more); each batch goes to a free instance. A batch is *staged* (stacked,
copied to the device in the serving dtype and memory format; on CUDA from
pinned memory on a side stream) before an instance is taken, so with a
pipeline depth of 1 the next batch is copied while the device runs the
current one. A CUDA out-of-memory error splits the batch in halves and
retries; only a single image that does not fit fails.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from .errors import LimitExceededError

log = logging.getLogger("framewire.runner")

DTYPES = ("float32", "float16", "bfloat16")

#: Turns a batch's output (on the CPU) into one result per image.
Finish = Callable[[Any], list]


@dataclass
class Staged:
    """A batch on its device, ready for an instance."""

    device: Any
    inputs: Any  # a [B, C, H, W] tensor, or a list of [C, H, W] tensors (detection)
    ready: Any = None  # a CUDA event recorded after the copy
    host: Any = None  # keeps pinned host memory alive until the copy is done
    size: int = 0


class Instance:
    """One copy of the network on one device, with its own thread."""

    def __init__(self, module, device, index: int):
        self.module = module
        self.device = device
        self.index = index
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"instance-{device}-{index}")


class ModelRunner:
    """Builds instances of a loaded model and runs staged batches on them."""

    def __init__(self, loaded, *, devices: tuple[str, ...], dtype: str, handler=None, instances_per_device: int = 1,
                 channels_last: bool = True, cuda_graphs: bool = False):
        import torch

        from .tasks import task_handler

        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
        self.name = f"{loaded.name}:{loaded.version}"
        self.task = loaded.task
        self.handler = handler or task_handler(loaded.artifact)
        self.devices = [torch.device(d) for d in devices]
        self.dtype = getattr(torch, dtype)
        self.dtype_name = dtype
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.instances: list[Instance] = []
        self._free: dict[Any, asyncio.Queue] = {}
        self._streams: dict[Any, Any] = {}
        self._busy: dict[Any, int] = {}
        self._stage_pool = ThreadPoolExecutor(max_workers=max(1, len(self.devices)), thread_name_prefix="stage")
        for device in self.devices:
            for i in range(instances_per_device):
                module = copy.deepcopy(loaded.module) if (self.instances or len(self.devices) > 1) else loaded.module
                self.instances.append(Instance(self._place(module, device), device, i))
            if device.type == "cuda":
                self._streams[device] = torch.cuda.Stream(device)

    @property
    def device_label(self) -> str:
        return ",".join(str(d) for d in self.devices)

    def _place(self, module, device):
        import torch

        module = module.to(device=device, dtype=self.dtype)
        if self.channels_last and self.handler.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    # --------------------------------------------------------------- blocking

    def warm_up(self, sizes: list[int], example_shape: tuple[int, int, int]) -> None:
        """Run each batch size once on every instance (blocking)."""
        import torch

        if not sizes:
            return
        for instance in self.instances:
            for size in sizes:
                if self.handler.stacked:
                    items = [torch.zeros(example_shape) for _ in range(size)]
                else:
                    items = [torch.rand(example_shape) for _ in range(size)]
                staged = self.stage(items, instance.device)
                self.forward(instance, staged)
            if self.cuda_graphs and instance.device.type == "cuda" and self.handler.stacked:
                from .cuda_graphs import graph_module

                instance.module = graph_module(
                    instance.module, device=instance.device, dtype=self.dtype, sample_shape=example_shape,
                    buckets=sizes, channels_last=self.channels_last, name=self.name,
                )
        log.info("%s warmed up at batch sizes %s on %s", self.name, sizes, self.device_label)

    def stage(self, items: list, device) -> Staged:
        """Gather a batch on `device` in the serving dtype and layout (one copy
        per image on the CPU; on CUDA from pinned memory on a side stream)."""
        import torch

        if not self.handler.stacked:
            tensors = [t.to(device, non_blocking=True).to(self.dtype) for t in items]
            return Staged(device, tensors, size=len(items))
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        shape = (len(items), *items[0].shape)
        if device.type != "cuda":
            x = torch.empty(shape, dtype=self.dtype, memory_format=layout)
            for i, item in enumerate(items):
                x[i].copy_(item)
            return Staged(device, x, size=len(items))
        host = torch.empty(shape, dtype=items[0].dtype, pin_memory=True)
        for i, item in enumerate(items):
            host[i].copy_(item)
        stream = self._streams[device]
        with torch.cuda.stream(stream):
            x = host.to(device, non_blocking=True).to(self.dtype).contiguous(memory_format=layout)
            ready = torch.cuda.Event()
            ready.record(stream)
        return Staged(device, x, ready, host, len(items))

    def forward(self, instance: Instance, staged: Staged, finish: Finish | None = None) -> list:
        """Run a staged batch. Returns `finish(output)` (default: per-image outputs
        on the CPU in float32); `output` is the batch's output moved to the CPU."""
        import torch

        if staged.ready is not None:
            current = torch.cuda.current_stream(staged.device)
            current.wait_event(staged.ready)
            for tensor in staged.inputs if isinstance(staged.inputs, list) else [staged.inputs]:
                tensor.record_stream(current)
        with torch.inference_mode():
            if staged.device.type == "cuda":
                with torch.cuda.device(staged.device):
                    output = self._forward_split(instance, staged.inputs)
            else:
                output = self._forward_split(instance, staged.inputs)
            return (finish or _unbind)(output)

    def _forward_split(self, instance: Instance, inputs):
        import torch

        try:
            out = instance.module(inputs)
        except torch.OutOfMemoryError:
            size = len(inputs)
            if _on_cuda(inputs):
                torch.cuda.empty_cache()
            if size == 1:
                raise LimitExceededError(
                    f"model {self.name} ran out of device memory on a single image; send a "
                    "smaller image or give the model a larger device"
                ) from None
            half = size // 2
            log.warning("%s: out of memory at batch %d; splitting into %d + %d", self.name, size, half, size - half)
            first = self._forward_split(instance, inputs[:half])
            second = self._forward_split(instance, inputs[half:])
            return self.handler.concat([first, second])
        return self.handler.model_output(out, len(inputs))

    # ------------------------------------------------------------------ async

    def start(self) -> None:
        """Create the free-instance queues (call from the event loop)."""
        for device in self.devices:
            self._free[device] = asyncio.Queue()
            self._busy[device] = 0
        for instance in self.instances:
            self._free[instance.device].put_nowait(instance)

    async def run(self, items: list, finish: Finish | None = None) -> list:
        """Stage a batch, take a free instance and run it; `finish` runs in the
        instance's thread on the batch's output (see `forward`).

        On the CPU staging and running are one step in the instance's thread;
        on CUDA the batch is staged (copied) before an instance is free, so the
        copy overlaps the previous batch's compute.
        """
        loop = asyncio.get_running_loop()
        device = min(self.devices, key=lambda d: self._busy[d])
        self._busy[device] += 1
        try:
            staged = None
            if device.type == "cuda":
                staged = await loop.run_in_executor(self._stage_pool, self.stage, items, device)
            instance = await self._free[device].get()
            try:
                return await loop.run_in_executor(instance.executor, self._run_on, instance, staged, items, finish)
            finally:
                self._free[device].put_nowait(instance)
        finally:
            self._busy[device] -= 1

    def _run_on(self, instance: Instance, staged: Staged | None, items: list, finish: Finish | None) -> list:
        if staged is None:
            staged = self.stage(items, instance.device)
        return self.forward(instance, staged, finish)

    def pids(self) -> set[int]:
        """Worker processes (none: instances run in this process)."""
        return set()

    def close(self) -> None:
        for instance in self.instances:
            instance.executor.shutdown(wait=True)
        self._stage_pool.shutdown(wait=True)
        self.instances.clear()


def _unbind(output) -> list:
    return output if isinstance(output, list) else list(output.unbind(0))


def _on_cuda(inputs) -> bool:
    first = inputs[0] if isinstance(inputs, list) else inputs
    return getattr(first, "is_cuda", False)
