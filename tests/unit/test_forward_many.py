"""DeviceModel.forward_many: several prepared batches in one forward pass,
each answered with exactly what `forward` gives it alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from framewire.service.device_model import DeviceModel
from framewire.service.errors import InferenceError, InvalidInputError
from framewire.service.pixels import Prepared
from framewire.service.tasks import task_handler
from framewire.service.worker_settings import WorkerSettings
from framewire.v1 import artifact_pb2 as pb
from support.oom_model import RunsOutOfMemoryAbove


class Boxes(torch.nn.Module):
    """A detection-style model: a list of images in, a dict per image out."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def forward(self, images):
        self.batches.append(len(images))
        return [{"boxes": img.mean().reshape(1, 1).repeat(1, 4), "labels": torch.tensor([img.shape[-1]]),
                 "scores": img.amax().reshape(1)} for img in images]


def device_model(module, task=pb.TASK_CLASSIFICATION) -> DeviceModel:
    artifact = pb.ModelArtifact(name="m", version=1, task=task)
    settings = WorkerSettings(model_id="m:1", artifact="m.fwa")
    return DeviceModel(module.eval(), task_handler(artifact), settings, ThreadPoolExecutor(1), name="m:1")


def prepared(items, rows=None, errors=None) -> Prepared:
    return Prepared(torch.stack(items), rows if rows is not None else list(range(len(items))), errors or {})


def test_merged_batches_get_the_outputs_each_gets_alone_in_one_forward_pass():
    module = RunsOutOfMemoryAbove()
    model = device_model(module)
    bad = InvalidInputError("JPEG data is corrupt or truncated")
    batches = [
        [torch.randn(3, 2, 2) for _ in range(2)],
        [torch.randn(3, 2, 2) for _ in range(3)],
        [torch.randn(3, 2, 2) for _ in range(4)],
    ]
    errors = [{}, {1: bad}, {}]
    rows = [[0, 1], [2, 0, 1], [0, 1, 2, 3]]  # a batch's rows need not be in order (pixels first, then floats)
    alone = [model.forward(prepared(b, r, e)) for b, r, e in zip(batches, rows, errors)]
    module.batches.clear()
    merged = model.forward_many([prepared(b, r, e) for b, r, e in zip(batches, rows, errors)])
    assert module.batches == [9]
    for one, many in zip(alone, merged):
        assert many.rows == one.rows and many.errors == one.errors
        torch.testing.assert_close(many.output, one.output)
        assert (many.device_rows, many.merged) == (9, 3)
    assert merged[1].rows == [2, 0]  # row 1 failed to decode
    assert (alone[0].device_rows, alone[0].merged) == (2, 1)


def test_a_batch_whose_every_row_failed_takes_no_part():
    module = RunsOutOfMemoryAbove()
    model = device_model(module)
    bad = InvalidInputError("JPEG data is corrupt or truncated")
    good, failed = [torch.randn(3, 2, 2) for _ in range(2)], [torch.zeros(3, 2, 2)]
    outcomes = model.forward_many([prepared(failed, errors={0: bad}), prepared(good)])
    assert module.batches == [2]
    assert (outcomes[0].rows, outcomes[0].errors, outcomes[0].device_rows, outcomes[0].merged) == ([], {0: bad}, 0, 0)
    assert (outcomes[1].rows, outcomes[1].device_rows, outcomes[1].merged) == ([0, 1], 2, 1)


def test_out_of_memory_splits_the_merged_batch_and_each_still_gets_its_rows():
    module = RunsOutOfMemoryAbove(limit=3)
    model = device_model(module)
    batches = [[torch.randn(3, 2, 2) for _ in range(n)] for n in (2, 3)]
    outcomes = model.forward_many([prepared(b) for b in batches])
    assert module.batches == [5, 2, 3]
    with torch.inference_mode():
        for items, outcome in zip(batches, outcomes):
            torch.testing.assert_close(outcome.output, module.linear(torch.stack(items).flatten(1)))


def test_a_forward_that_fails_fails_the_whole_merge():
    class Wrong(torch.nn.Module):
        def forward(self, x):
            return x[:1].flatten(1)  # one row whatever the batch

    model = device_model(Wrong())
    with pytest.raises(InferenceError, match="for a batch of 5"):
        model.forward_many([prepared([torch.randn(3, 2, 2)] * 2), prepared([torch.randn(3, 2, 2)] * 3)])


def test_listed_inputs_of_a_detection_model_are_joined_and_split_back():
    module = Boxes()
    model = device_model(module, pb.TASK_DETECTION)
    first = Prepared([torch.rand(3, 4, 5), torch.rand(3, 6, 7)], [0, 1], {})
    second = Prepared([torch.rand(3, 8, 9)], [0], {})
    alone = [model.forward(Prepared(list(p.inputs), list(p.rows), {})) for p in (first, second)]
    module.batches.clear()
    outcomes = model.forward_many([first, second])
    assert module.batches == [3]
    for one, many in zip(alone, outcomes):
        assert many.rows == one.rows and len(many.output) == len(one.output)
        for a, b in zip(one.output, many.output):
            for key in ("boxes", "labels", "scores"):
                torch.testing.assert_close(a[key], b[key])
