"""The declared interface of a task handler, the generic tensor-out handler,
and the registry.

A handler is built per model version (`task_handler(artifact)`) and owns
everything that differs between tasks on the request path:

* **input checks** in the front end: what an already preprocessed float32
  tensor must look like (`check_preprocessed`);
* **batch layout** next to the device: images stacked into one
  [B, C, H, W] tensor (`stacked`, fixed-size models) or passed as a list of
  [C, H, W] tensors of their own sizes (detection), and whether the network
  may run channels_last;
* **warm-up inputs** (`warmup_shape`, `warmup_sizes`);
* **model output** checks and the **encoding between processes**
  (`model_output`, `encode_output`, `decode_output`);
* **answers**: outputs to `ImagePrediction`s, in original pixels
  (`answer`);
* **protocol outputs**: the native `Prediction` result (`fill_prediction`)
  and the Open Inference Protocol's output tensors (`oip_outputs`,
  `oip_output`).

Decoding and preprocessing are the same for every task and follow the
artifact's recorded preprocessing; a handler only chooses the layout. A
new task is one module with a `TaskHandler` subclass plus one
`register_task` line (docs/request-path.md shows segmentation).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from framewire.exporter import format as fmt

from ..domain import ImageInput, ImagePrediction, PredictParams
from ..errors import InferenceError, InvalidInputError
from ..api.oip_tensors import OutputTensor
from ..payloads import Payload
from ..preprocess import Geometry, PreprocessSpec, check_pixels, read_header

_REGISTRY: dict[str, type["TaskHandler"]] = {}


class TaskHandler:
    """What one task does on the request path; see the module doc.

    Subclasses set `name` and implement the output side (`answer`,
    `fill_prediction`, `oip_outputs`, `oip_output`); the input side and the
    tensor encoding have defaults for fixed-size models with one output row
    per image.
    """

    name: ClassVar[str] = ""
    #: Images of a batch form one [B, C, H, W] tensor (True) or a list of [C, H, W] tensors of any size.
    stacked: ClassVar[bool] = True

    def __init__(self, artifact):
        self.model_name = artifact.name
        self.labels: list[str] = list(artifact.output.labels)
        self.spec = PreprocessSpec.from_artifact(artifact)
        self.declared_outputs = {o.name: list(o.shape) for o in artifact.output.outputs}

    # ------------------------------------------------------------ front end

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the network takes (H and W are 0 for models of any size)."""
        return self.spec.channels, self.spec.height, self.spec.width

    def admit(self, image: ImageInput, *, max_pixels: int, max_bytes: int) -> tuple[Payload, Geometry]:
        """The front end's check of one image, from its header or shape
        alone, and the compact payload that carries it to the device."""
        if image.kind == "encoded":
            header = read_header(image.data, max_pixels=max_pixels, max_bytes=max_bytes)
            self._check_size(header.height, header.width)
            payload = Payload("encoded", image.data, header.height, header.width, header.format, header.orientation)
            return payload, self.spec.geometry(header.height, header.width)
        array = image.array
        if image.kind == "uint8":
            height, width = array.shape[:2]
            check_pixels(height, width, max_pixels)
            self._check_size(height, width)
            return Payload("uint8", array, height, width), self.spec.geometry(height, width)
        self.check_preprocessed(tuple(array.shape), max_pixels)
        _, height, width = array.shape
        return Payload("float32", array, height, width), Geometry(height, width, 1.0, 1.0, 0, 0)

    def _check_size(self, height: int, width: int) -> None:
        """A stacked model whose preprocessing does not resize takes only its own size."""
        if self.stacked and not self.spec.fixed_size and (height, width) != (self.spec.height, self.spec.width):
            raise InvalidInputError(
                f"image is {width}x{height} pixels; model {self.model_name} takes {self.spec.width}x"
                f"{self.spec.height} images and its preprocessing does not resize them; send that size"
            )

    def check_preprocessed(self, shape: tuple[int, ...], max_pixels: int) -> None:
        """Refuse a client's float32 [C, H, W] tensor the network cannot take."""
        if tuple(shape) != self.input_shape:
            raise InvalidInputError(
                f"float tensor is {list(shape)}; model {self.model_name} takes {list(self.input_shape)} "
                "already preprocessed (send UINT8 [H, W, 3] or encoded bytes to have the server "
                "resize and normalise)"
            )

    def warmup_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images warm-up batches are made of."""
        return self.input_shape

    def warmup_sizes(self, max_batch_size: int, on_cuda: bool) -> list[int]:
        """Batch sizes to run once before taking traffic: powers of two up
        to the maximum on CUDA (each size gets its kernels and graphs), the
        smallest and largest on the CPU."""
        if not on_cuda:
            return sorted({1, max_batch_size})
        sizes, size = [], 1
        while size < max_batch_size:
            sizes.append(size)
            size *= 2
        return [*sizes, max_batch_size]

    # -------------------------------------------------------- device side

    @property
    def channels_last(self) -> bool:
        """Whether the network may run in channels_last memory format."""
        return self.stacked

    def model_output(self, output, batch_size: int):
        """The network's output for a batch, checked, as float32 on the CPU."""
        import torch

        if not isinstance(output, torch.Tensor) or output.ndim < 1 or output.shape[0] != batch_size:
            shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise InferenceError(f"model {self.model_name} returned {shape} for a batch of {batch_size}")
        return output.float().to("cpu")

    @staticmethod
    def concat(parts: list):
        """Outputs of the halves of a split batch, as one."""
        import torch

        return torch.cat(parts)

    @staticmethod
    def select(output, rows: list[int]):
        """The outputs of the images at `rows` (in that order)."""
        return output[rows]

    def encode_output(self, output) -> tuple[dict, bytes]:
        """A batch's output as a JSON-able header and the bytes it describes."""
        array = output.float().contiguous().numpy()
        return {"shape": list(array.shape)}, array.tobytes()

    def decode_output(self, header: dict, payload: bytes):
        """The inverse of `encode_output`."""
        import torch

        return torch.frombuffer(bytearray(payload), dtype=torch.float32).reshape(header["shape"])

    # ------------------------------------------------------------- answers

    def answer(self, output, geometries: list[Geometry], params: list[PredictParams]) -> list[ImagePrediction]:
        """One ImagePrediction per image of the batch's output."""
        raise NotImplementedError

    # ----------------------------------------------------------- protocols

    def fill_prediction(self, prediction: ImagePrediction, message) -> None:
        """Set the task's result in a native `framewire.v1.Prediction`."""

    def oip_preprocessed_shape(self) -> list[int]:
        """Shape of the protocol's `preprocessed` input ([-1, C, H, W])."""
        channels, height, width = self.input_shape
        return [-1, channels, height or -1, width or -1]

    def oip_outputs(self) -> list[tuple[str, str, list[int]]]:
        """The protocol's outputs: (name, datatype, shape without the batch dimension)."""
        raise NotImplementedError

    def oip_output(self, name: str, predictions: list[ImagePrediction], class_count: int) -> OutputTensor:
        """One requested protocol output for a batch of predictions."""
        raise NotImplementedError

    def oip_needs_raw(self, names: list[str]) -> bool:
        """Whether the requested outputs `names` need the raw outputs (return_raw)."""
        return False

    def oip_class_count_ok(self, name: str) -> bool:
        """Whether output `name` supports the classification extension (class_count)."""
        return False

    def _declared_width(self, *names: str) -> int:
        for name in names:
            if name in self.declared_outputs and self.declared_outputs[name]:
                return int(self.declared_outputs[name][-1])
        return -1


class TensorOutputTask(TaskHandler):
    """The generic tensor-out case: the network's output row per image,
    returned as is (native raw output `output`, protocol output `output`).
    Classification and embedding build on it; so would segmentation."""

    name = "tensor"
    output_name: ClassVar[str] = "output"

    def answer(self, output, geometries, params):
        return [self._raw_row(row, g) for row, g in zip(output, geometries)]

    def _raw_row(self, row, geometry: Geometry) -> ImagePrediction:
        pred = ImagePrediction(geometry.original_width, geometry.original_height)
        pred.raw[self.output_name] = row.float().numpy()
        return pred

    def oip_outputs(self):
        shape = self.declared_outputs.get(self.output_name, [-1, -1])[1:] or [-1]
        return [(self.output_name, "FP32", [int(d) for d in shape])]

    def oip_output(self, name, predictions, class_count):
        data = np.stack([p.raw[self.output_name] for p in predictions]).astype("<f4")
        return OutputTensor(name, "FP32", list(data.shape), data.tobytes())


def register_task(handler: type[TaskHandler]) -> type[TaskHandler]:
    """Make `handler` serve artifacts whose task is `handler.name`; refuses duplicates."""
    if not handler.name:
        raise ValueError(f"{handler.__name__} has no task name")
    if handler.name in _REGISTRY:
        raise ValueError(f"task {handler.name!r} already has a handler ({_REGISTRY[handler.name].__name__})")
    _REGISTRY[handler.name] = handler
    return handler


def task_class(name: str) -> type[TaskHandler]:
    """The handler class of task `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"no handler for task {name!r}; known tasks: {', '.join(task_names())}") from None


def task_handler(artifact: Any) -> TaskHandler:
    """The handler for an artifact's task."""
    return task_class(fmt.TASK_NAMES.get(artifact.task, str(artifact.task)))(artifact)


def task_names() -> list[str]:
    """Every registered task, sorted."""
    return sorted(_REGISTRY)
