"""Task handlers: the registry, and each handler's encoding between processes and answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framewire.service.domain import PredictParams
from framewire.service.errors import InferenceError, InvalidInputError
from framewire.service.preprocess import Geometry
from framewire.service.tasks import TaskHandler, register_task, task_class, task_handler, task_names
from framewire.v1 import artifact_pb2 as pb
from framewire.v1 import inference_pb2 as ipb


def artifact(task: int, *, height: int = 8, width: int = 8, outputs=(),
             resize: int = pb.RESIZE_MODE_NONE) -> pb.ModelArtifact:
    a = pb.ModelArtifact(name="m", version=1, task=task)
    a.input.channels, a.input.height, a.input.width = 3, height, width
    a.preprocessing.resize_mode = resize
    a.output.labels.extend(["a", "b", "c"])
    for name, shape in outputs:
        a.output.outputs.add(name=name, shape=shape)
    return a


GEOMETRY = Geometry(40, 60, 1.0, 1.0, 0, 0)


def test_the_registry_knows_every_task_and_refuses_a_second_handler():
    assert task_names() == ["classification", "detection", "embedding", "tensor"]

    class Another(TaskHandler):
        name = "classification"

    with pytest.raises(ValueError, match="already has a handler"):
        register_task(Another)
    with pytest.raises(ValueError, match="no handler for task 'segmentation'"):
        task_class("segmentation")


@pytest.mark.parametrize("task", [pb.TASK_CLASSIFICATION, pb.TASK_EMBEDDING])
def test_tensor_outputs_cross_processes_unchanged(task):
    handler = task_handler(artifact(task))
    output = torch.randn(4, 3)
    header, payload = handler.encode_output(output)
    torch.testing.assert_close(handler.decode_output(header, payload), output)
    torch.testing.assert_close(handler.select(output, [3, 1]), output[[3, 1]])


def test_detections_cross_processes_unchanged_and_select_by_row():
    handler = task_handler(artifact(pb.TASK_DETECTION, height=0, width=0))
    output = [{"boxes": torch.rand(n, 4), "labels": torch.arange(n), "scores": torch.rand(n)} for n in (2, 0, 3)]
    back = handler.decode_output(*handler.encode_output(output))
    for a, b in zip(output, back):
        for key in ("boxes", "labels", "scores"):
            torch.testing.assert_close(a[key], b[key])
    assert [len(d["scores"]) for d in handler.select(output, [2, 0])] == [3, 2]


def test_a_model_output_of_the_wrong_batch_size_is_an_inference_error():
    with pytest.raises(InferenceError, match=r"returned \[3, 3\] for a batch of 4"):
        task_handler(artifact(pb.TASK_CLASSIFICATION)).model_output(torch.zeros(3, 3), 4)
    with pytest.raises(InferenceError, match="one dict of boxes"):
        task_handler(artifact(pb.TASK_DETECTION)).model_output(torch.zeros(3, 3), 3)


def test_classification_answers_top_k_per_image_and_fills_the_native_message():
    handler = task_handler(artifact(pb.TASK_CLASSIFICATION))
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    answers = handler.answer(logits, [GEOMETRY] * 2, [PredictParams(top_k=2), PredictParams(top_k=1, return_raw=True)])
    assert [c.label for c in answers[0].classes] == ["b", "c"] and [c.index for c in answers[1].classes] == [0]
    assert "logits" in answers[1].raw and "logits" not in answers[0].raw
    message = ipb.Prediction()
    handler.fill_prediction(answers[0], message)
    assert [c.label for c in message.classification.classes] == ["b", "c"]
    assert handler.oip_needs_raw(["probabilities"]) and not handler.oip_needs_raw(["top_k_labels"])


def test_the_generic_tensor_handler_returns_rows_as_they_are():
    handler = task_class("tensor")(artifact(pb.TASK_UNSPECIFIED, outputs=[("output", [-1, 7])]))
    rows = torch.randn(2, 7)
    answers = handler.answer(rows, [GEOMETRY] * 2, [PredictParams()] * 2)
    np.testing.assert_array_equal(answers[1].raw["output"], rows[1].numpy())
    assert handler.oip_outputs() == [("output", "FP32", [7])]
    tensor = handler.oip_output("output", answers, 0)
    assert tensor.shape == [2, 7]


def test_float_inputs_are_checked_per_task():
    with pytest.raises(InvalidInputError, match=r"float tensor is \[3, 4, 4\]; model m takes \[3, 8, 8\]"):
        task_handler(artifact(pb.TASK_CLASSIFICATION)).check_preprocessed((3, 4, 4), 10**6)
    detection = task_handler(artifact(pb.TASK_DETECTION, height=0, width=0))
    detection.check_preprocessed((3, 50, 70), 10**6)  # any size
    with pytest.raises(InvalidInputError, match="1 channels; model m takes 3"):
        detection.check_preprocessed((1, 50, 70), 10**6)
    with pytest.raises(InvalidInputError, match="--max-image-pixels"):
        detection.check_preprocessed((3, 5000, 5000), 10**6)


def test_admission_reads_headers_only_and_reports_displayed_sizes():
    from framewire.service.domain import ImageInput
    from support.images import encode, png_claiming, random_image

    handler = task_handler(artifact(pb.TASK_CLASSIFICATION, resize=pb.RESIZE_MODE_EXACT))
    data = encode(random_image(0, 30, 50), "JPEG")
    payload, geometry = handler.admit(ImageInput.encoded(data), max_pixels=10**6, max_bytes=10**6)
    assert (payload.kind, payload.data, payload.height, payload.width, payload.format) == ("encoded", data, 30, 50, "JPEG")
    assert (geometry.original_height, geometry.original_width) == (30, 50)
    with pytest.raises(InvalidInputError, match="--max-image-pixels"):
        handler.admit(ImageInput.encoded(png_claiming(5000, 5000)), max_pixels=10**6, max_bytes=10**6)
    array = random_image(1, 20, 10)
    payload, _ = handler.admit(ImageInput("uint8", array=array), max_pixels=10**6, max_bytes=10**6)
    assert payload.data is array and payload.nbytes == 20 * 10 * 3


def test_a_fixed_size_model_that_does_not_resize_refuses_other_sizes():
    from framewire.service.domain import ImageInput
    from support.images import random_image

    handler = task_handler(artifact(pb.TASK_CLASSIFICATION))  # RESIZE_MODE_NONE, 8x8
    handler.admit(ImageInput("uint8", array=random_image(0, 8, 8)), max_pixels=10**6, max_bytes=10**6)
    with pytest.raises(InvalidInputError, match="image is 10x12 pixels; model m takes 8x8 images"):
        handler.admit(ImageInput("uint8", array=random_image(0, 12, 10)), max_pixels=10**6, max_bytes=10**6)
