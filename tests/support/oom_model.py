"""A tiny torch model for DeviceModel tests that runs out of memory on purpose."""

from __future__ import annotations

import torch


class RunsOutOfMemoryAbove(torch.nn.Module):
    """A linear classifier (seeded) that records the batch sizes it ran and
    raises torch's real OutOfMemoryError above `limit`."""

    def __init__(self, limit: int = 1000):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(12, 4)
        self.limit = limit
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test model)")
        return self.linear(x.flatten(1))
