"""ModelRunner on the CPU: batches to per-item outputs, out-of-memory splits."""

from __future__ import annotations

import asyncio

import pytest
import torch

from framewire.exporter.loader import LoadedModel
from framewire.service.errors import LimitExceededError
from framewire.service.runner import ModelRunner
from framewire.v1 import artifact_pb2 as pb


class RunsOutOfMemoryAbove(torch.nn.Module):
    """A model whose forward raises torch's real OutOfMemoryError above a batch size."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.linear = torch.nn.Linear(12, 4)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test model)")
        return self.linear(x.flatten(1))


def loaded(module) -> LoadedModel:
    artifact = pb.ModelArtifact(name="m", version=1, task=pb.TASK_CLASSIFICATION)
    return LoadedModel("m.fwa", artifact, module.eval(), 0)


def run(runner: ModelRunner, items):
    async def main():
        runner.start()
        return await runner.run(items)

    return asyncio.run(main())


def test_a_batch_comes_back_as_one_output_per_item():
    module = RunsOutOfMemoryAbove(limit=100)
    runner = ModelRunner(loaded(module), devices=("cpu",), dtype="float32")
    items = [torch.randn(3, 2, 2) for _ in range(5)]
    outputs = run(runner, items)
    assert len(outputs) == 5
    with torch.inference_mode():
        for item, out in zip(items, outputs):
            torch.testing.assert_close(out, module(item[None])[0])
    runner.close()


def test_out_of_memory_splits_the_batch_and_retries():
    module = RunsOutOfMemoryAbove(limit=2)
    runner = ModelRunner(loaded(module), devices=("cpu",), dtype="float32")
    items = [torch.randn(3, 2, 2) for _ in range(7)]
    outputs = run(runner, items)
    with torch.inference_mode():
        for item, out in zip(items, outputs):
            torch.testing.assert_close(out, module.linear(item.flatten()))
    # 7 fails -> 3 + 4; 3 fails -> 1 + 2; 4 fails -> 2 + 2
    assert module.batches == [7, 3, 1, 2, 4, 2, 2]
    runner.close()


def test_a_single_item_that_does_not_fit_fails_clearly():
    runner = ModelRunner(loaded(RunsOutOfMemoryAbove(limit=0)), devices=("cpu",), dtype="float32")
    with pytest.raises(LimitExceededError, match="ran out of device memory on a single image"):
        run(runner, [torch.randn(3, 2, 2)])
    runner.close()


def test_bfloat16_on_the_cpu():
    module = RunsOutOfMemoryAbove(limit=100)
    runner = ModelRunner(loaded(module), devices=("cpu",), dtype="bfloat16", channels_last=False)
    outputs = run(runner, [torch.randn(3, 2, 2)])
    assert outputs[0].dtype == torch.float32 and outputs[0].shape == (4,)
    runner.close()
