"""DeviceModel on the CPU: batches to per-row outputs, out-of-memory splits, failed rows left out."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from framewire.service.device_model import DeviceModel
from framewire.service.errors import InvalidInputError, LimitExceededError
from framewire.service.pixels import Prepared
from framewire.service.tasks import task_handler
from framewire.service.worker_settings import WorkerSettings
from framewire.v1 import artifact_pb2 as pb
from support.oom_model import RunsOutOfMemoryAbove


def device_model(module, dtype: str = "float32", channels_last: bool = True) -> DeviceModel:
    artifact = pb.ModelArtifact(name="m", version=1, task=pb.TASK_CLASSIFICATION)
    settings = WorkerSettings(model_id="m:1", artifact="m.fwa", dtype=dtype, channels_last=channels_last)
    return DeviceModel(module.eval(), task_handler(artifact), settings, ThreadPoolExecutor(1), name="m:1")


def run(model: DeviceModel, items, errors=None):
    return model.forward(Prepared(torch.stack(items).to(model.dtype), list(range(len(items))), errors or {}))


def test_a_batch_comes_back_as_one_output_per_row():
    module = RunsOutOfMemoryAbove(limit=100)
    items = [torch.randn(3, 2, 2) for _ in range(5)]
    outcome = run(device_model(module), items)
    assert outcome.rows == [0, 1, 2, 3, 4] and outcome.errors == {}
    with torch.inference_mode():
        for item, out in zip(items, outcome.output):
            torch.testing.assert_close(out, module(item[None])[0])


def test_out_of_memory_splits_the_batch_and_retries():
    module = RunsOutOfMemoryAbove(limit=2)
    items = [torch.randn(3, 2, 2) for _ in range(7)]
    outcome = run(device_model(module), items)
    with torch.inference_mode():
        for item, out in zip(items, outcome.output):
            torch.testing.assert_close(out, module.linear(item.flatten()))
    # 7 fails -> 3 + 4; 3 fails -> 1 + 2; 4 fails -> 2 + 2
    assert module.batches == [7, 3, 1, 2, 4, 2, 2]


def test_a_single_item_that_does_not_fit_fails_clearly():
    with pytest.raises(LimitExceededError, match="ran out of device memory on a single image"):
        run(device_model(RunsOutOfMemoryAbove(limit=0)), [torch.randn(3, 2, 2)])


def test_rows_that_failed_to_decode_are_left_out_of_the_outcome():
    module = RunsOutOfMemoryAbove(limit=100)
    items = [torch.randn(3, 2, 2) for _ in range(4)]
    bad = InvalidInputError("JPEG data is corrupt or truncated")
    outcome = run(device_model(module), items, errors={1: bad})
    assert outcome.rows == [0, 2, 3] and outcome.errors == {1: bad}
    with torch.inference_mode():
        torch.testing.assert_close(outcome.output[1], module(items[2][None])[0])


def test_bfloat16_on_the_cpu():
    outcome = run(device_model(RunsOutOfMemoryAbove(limit=100), "bfloat16", channels_last=False), [torch.randn(3, 2, 2)])
    assert outcome.output[0].dtype == torch.float32 and outcome.output[0].shape == (4,)
