"""Native API protobuf <-> domain conversion (no model logic)."""

from __future__ import annotations

import numpy as np

from framewire.v1 import artifact_pb2 as apb
from framewire.v1 import inference_pb2 as pb

from .. import requests
from ..domain import ImageInput, ImagePrediction, PredictParams, Served
from ..errors import InvalidInputError
from ..repository import VersionSlot
from .states import native_state

_TENSOR_DTYPES = {apb.DATA_TYPE_UINT8: "uint8", apb.DATA_TYPE_FLOAT32: "float32"}
_RAW_DTYPES = {np.dtype("float32"): apb.DATA_TYPE_FLOAT32, np.dtype("int64"): apb.DATA_TYPE_INT64}


def image_input(image: pb.Image, *, max_elements: int, where: str = "image") -> ImageInput:
    """A protobuf Image as a checked ImageInput."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return ImageInput.encoded(image.encoded)
    if kind == "tensor":
        tensor = image.tensor
        dtype = _TENSOR_DTYPES.get(tensor.dtype)
        if dtype is None:
            name = apb.DataType.Name(tensor.dtype) if tensor.dtype in apb.DataType.values() else str(tensor.dtype)
            raise InvalidInputError(
                f"{where}: tensor dtype {name} is not accepted; send DATA_TYPE_UINT8 [H, W, 3] "
                "RGB or DATA_TYPE_FLOAT32 [3, H, W] preprocessed"
            )
        try:
            return ImageInput.from_tensor(dtype, tuple(tensor.shape), tensor.data, max_elements=max_elements)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc.message}") from None
    raise InvalidInputError(f"{where} is empty; set `encoded` (JPEG/PNG/WebP/BMP bytes) or `tensor`")


def predict_params(options: pb.PredictOptions) -> PredictParams:
    return requests.predict_params(
        top_k=options.top_k,
        score_threshold=options.score_threshold if options.HasField("score_threshold") else None,
        max_detections=options.max_detections,
        return_raw=options.return_raw,
    )


def prediction(pred: ImagePrediction, handler) -> pb.Prediction:
    """A prediction as the native message; the model's task handler sets its result."""
    out = pb.Prediction(image_width=pred.width, image_height=pred.height)
    handler.fill_prediction(pred, out)
    for name, array in pred.raw.items():
        array = np.ascontiguousarray(array)
        out.raw_outputs.add(
            name=name,
            tensor=pb.Tensor(
                dtype=_RAW_DTYPES[array.dtype], shape=list(array.shape), data=array.astype(array.dtype.newbyteorder("<")).tobytes()
            ),
        )
    return out


def served_by(served: Served) -> pb.ServedBy:
    return pb.ServedBy(model=served.model, version=served.version, device=served.device)


def timing(served: Served, total_seconds: float) -> pb.Timing:
    return pb.Timing(
        preprocess_us=int(served.preprocess_seconds * 1e6),
        queue_us=int(served.queue_seconds * 1e6),
        compute_us=int(served.compute_seconds * 1e6),
        total_us=int(total_seconds * 1e6),
        batch_size=served.batch_size,
    )


def version_status(slot: VersionSlot) -> pb.ModelVersionStatus:
    return pb.ModelVersionStatus(
        version=slot.version, state=native_state(slot.state), reason=slot.reason, device=slot.device
    )
