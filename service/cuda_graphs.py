"""CUDA graphs per batch-size bucket (`--cuda-graphs`).

A small network's forward pass launches hundreds of kernels; on a fast GPU
the Python and launch overhead can take longer than the kernels. A CUDA
graph replays the whole pass with one launch. Graphs need fixed shapes, so
one is captured for each batch-size bucket (the warm-up sizes) and a batch is
padded up to the smallest bucket that holds it; the padding rows are computed
and dropped. Batches larger than every bucket, and models whose capture
fails, run eagerly.
"""

from __future__ import annotations

import logging
from bisect import bisect_left

log = logging.getLogger("framewire.runner")


class GraphedModule:
    """Calls `module` through CUDA graphs captured at `buckets` batch sizes."""

    def __init__(self, module, *, device, dtype, sample_shape: tuple[int, ...], buckets: list[int],
                 channels_last: bool, name: str = "model"):
        import torch

        self.module = module
        self.buckets: list[int] = []
        self._graphs: dict[int, tuple] = {}
        layout = torch.channels_last if channels_last else torch.contiguous_format
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.device(device), torch.cuda.stream(side), torch.inference_mode():
            # Largest first: the smaller graphs reuse its memory pool.
            for size in sorted(set(buckets), reverse=True):
                static_in = torch.zeros((size, *sample_shape), device=device, dtype=dtype).contiguous(memory_format=layout)
                for _ in range(2):  # warm up outside the graph (allocator, cuDNN plans)
                    module(static_in)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side):
                    static_out = module(static_in)
                self._graphs[size] = (graph, static_in, static_out)
        torch.cuda.current_stream(device).wait_stream(side)
        self.buckets = sorted(self._graphs)
        log.info("%s: CUDA graphs captured at batch sizes %s", name, self.buckets)

    def bucket_for(self, size: int) -> int | None:
        """The smallest bucket that holds `size` images, or None."""
        return bucket_for(self.buckets, size)

    def __call__(self, inputs):
        size = inputs.shape[0]
        bucket = self.bucket_for(size)
        if bucket is None:
            return self.module(inputs)
        graph, static_in, static_out = self._graphs[bucket]
        static_in[:size].copy_(inputs)
        graph.replay()
        # The caller copies the result out before the next replay overwrites it.
        return static_out[:size]


def bucket_for(buckets: list[int], size: int) -> int | None:
    """The smallest of sorted `buckets` not below `size`, or None."""
    index = bisect_left(buckets, size)
    return buckets[index] if index < len(buckets) else None


def graph_module(module, **kwargs):
    """A GraphedModule, or `module` itself when capture fails (logged)."""
    try:
        return GraphedModule(module, **kwargs)
    except Exception as exc:  # capture fails for ops that sync with the host, dynamic control flow, ...
        log.warning("%s: CUDA graph capture failed (%s: %s); running eagerly", kwargs.get("name", "model"),
                    type(exc).__name__, exc)
        return module
