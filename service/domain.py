"""Plain request and result types shared by the APIs and the model path.

No torch and no gRPC here: the servicers convert protobuf to these, the
model path turns them into tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from framewire.v1.options import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K
from framewire.v1.results import ClassScore, Detection

from .errors import InvalidInputError

#: Element sizes of the raw tensor dtypes clients may send.
TENSOR_DTYPES = {"uint8": np.dtype("uint8"), "float32": np.dtype("<f4")}
#: An image tensor has at most this many dimensions ([N, H, W, C]).
MAX_TENSOR_DIMS = 4


def tensor_elements(shape, *, max_elements: int, what: str = "tensor") -> int:
    """The element count of a tensor shape, counted exactly (no overflow);
    INVALID_ARGUMENT for a negative dimension, too many dimensions or more
    elements than --max-tensor-elements."""
    dims = list(shape)
    if len(dims) > MAX_TENSOR_DIMS:
        raise InvalidInputError(f"{what} has {len(dims)} dimensions; an image tensor has at most {MAX_TENSOR_DIMS}")
    if any(d < 0 for d in dims):
        raise InvalidInputError(f"{what} shape {dims} has a negative dimension")
    elements = math.prod(dims)
    if elements > max_elements:
        raise InvalidInputError(
            f"{what} of shape {dims} has {elements} elements; the limit is {max_elements} (--max-tensor-elements)"
        )
    return elements


@dataclass(frozen=True)
class ImageInput:
    """One image as the client sent it.

    `kind` is "encoded" (JPEG/PNG/WebP/BMP bytes), "uint8" (an HWC RGB array
    of any size, to be preprocessed) or "float32" (a CHW array already
    preprocessed at the model's input size).
    """

    kind: str
    data: bytes = b""
    array: np.ndarray | None = None

    @classmethod
    def encoded(cls, data: bytes) -> "ImageInput":
        return cls("encoded", data=bytes(data))

    @classmethod
    def from_tensor(cls, dtype: str, shape: tuple[int, ...], data: bytes, *, max_elements: int) -> "ImageInput":
        """Check a raw tensor's dtype, shape and byte count; view it as an array."""
        if dtype not in TENSOR_DTYPES:
            raise InvalidInputError(
                f"tensor dtype {dtype} is not accepted for images; send UINT8 [H, W, 3] RGB "
                "or FLOAT32 [3, H, W] preprocessed"
            )
        elements = tensor_elements(shape, max_elements=max_elements)
        itemsize = TENSOR_DTYPES[dtype].itemsize
        if len(data) != elements * itemsize:
            raise InvalidInputError(
                f"tensor of shape {list(shape)} and dtype {dtype} needs {elements * itemsize} bytes "
                f"but {len(data)} were sent"
            )
        array = np.frombuffer(data, dtype=TENSOR_DTYPES[dtype]).reshape(shape)
        if dtype == "uint8":
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            if array.ndim != 3 or array.shape[2] != 3:
                raise InvalidInputError(
                    f"a UINT8 image tensor must be [H, W, 3] RGB (or [1, H, W, 3]); got {list(shape)}"
                )
            return cls("uint8", array=array)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3:
            raise InvalidInputError(
                f"a FLOAT32 image tensor must be [C, H, W] (or [1, C, H, W]); got {list(shape)}"
            )
        return cls("float32", array=array)


class ModelState(str, Enum):
    """Where a model version is in its life (service.repository moves it).
    The value is the state's word in the status document, metrics and
    messages; service/api/states.py spells it for each protocol."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    DRAINING = "DRAINING"


@dataclass(frozen=True)
class PredictParams:
    """What to return for each image."""

    top_k: int = DEFAULT_TOP_K
    return_raw: bool = False
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    max_detections: int = DEFAULT_MAX_DETECTIONS


@dataclass
class ImagePrediction:
    """The answer for one image; exactly one of the three results is set."""

    width: int
    height: int
    classes: list[ClassScore] | None = None
    embedding: list[float] | None = None
    detections: list[Detection] | None = None
    raw: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Served:
    """Predictions for one request and how they were served."""

    model: str
    version: int
    device: str
    predictions: list[ImagePrediction]
    preprocess_seconds: float
    queue_seconds: float
    compute_seconds: float
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)
