"""Open Inference Protocol tensors <-> framewire images and predictions.

Inputs (exactly one per request, batch dimension first):

| name             | datatype | shape          | meaning                                   |
| ---------------- | -------- | -------------- | ----------------------------------------- |
| `images`         | UINT8    | [N, H, W, 3]   | RGB images of any size, preprocessed here  |
| `encoded_images` | BYTES    | [N] or [N, 1]  | JPEG/PNG/WebP/BMP files                    |
| `preprocessed`   | FP32     | [N, C, H, W]   | already at the model's input size          |

Outputs depend on the task; each task handler (`service.tasks`) declares
and encodes its own (README, "The Open Inference Protocol").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .. import requests
from ..domain import ImageInput, ImagePrediction, tensor_elements
from ..errors import InvalidInputError

INPUTS = {
    "images": ("UINT8", "[N, H, W, 3] RGB"),
    "encoded_images": ("BYTES", "[N] encoded JPEG/PNG/WebP/BMP"),
    "preprocessed": ("FP32", "[N, C, H, W] preprocessed"),
}

def decode_bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """BYTES tensor data: each element a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInputError(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInputError(
                f"input {name!r}: a BYTES element claims {size} bytes but only {len(raw) - offset} remain"
            )
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def encode_bytes_elements(values) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def images_from_request(request, *, model: str, max_images: int, max_elements: int) -> list[ImageInput]:
    """The request's one image input as ImageInputs, checked against its spec."""
    if not request.inputs:
        raise InvalidInputError(f"the request has no inputs; send one of {', '.join(INPUTS)} (see ModelMetadata)")
    if len(request.inputs) > 1:
        names = ", ".join(t.name for t in request.inputs)
        raise InvalidInputError(f"the request has {len(request.inputs)} inputs ({names}); send exactly one image input")
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents holds {len(request.raw_input_contents)} entries for {len(request.inputs)} inputs"
        )
    tensor = request.inputs[0]
    if tensor.name not in INPUTS:
        raise InvalidInputError(
            f"unexpected inference input {tensor.name!r} for model {model!r}; inputs are "
            + ", ".join(f"{n} ({d} {s})" for n, (d, s) in INPUTS.items())
        )
    want, layout = INPUTS[tensor.name]
    if tensor.datatype != want:
        raise InvalidInputError(f"input {tensor.name!r} has datatype {tensor.datatype}; it must be {want} {layout}")
    shape = [int(d) for d in tensor.shape]
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    if raw is not None and tensor.HasField("contents"):
        raise InvalidInputError(f"input {tensor.name!r} has both raw and typed contents; send one")
    count = shape[0] if shape else 0
    if count < 1:
        raise InvalidInputError(f"input {tensor.name!r} has shape {shape}; the batch dimension must be at least 1")
    requests.image_count(count, max_images)
    if tensor.name == "encoded_images":
        return _encoded(tensor, shape, raw)
    return _arrays(tensor, shape, raw, max_elements)


def _encoded(tensor, shape: list[int], raw: bytes | None) -> list[ImageInput]:
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInputError(f"input 'encoded_images' has shape {shape}; it must be [N] or [N, 1]")
    elements = decode_bytes_elements(raw, tensor.name) if raw is not None else list(tensor.contents.bytes_contents)
    if len(elements) != shape[0]:
        raise InvalidInputError(
            f"input 'encoded_images' has shape {shape} but its data holds {len(elements)} elements"
        )
    return [ImageInput.encoded(e) for e in elements]


def _arrays(tensor, shape: list[int], raw: bytes | None, max_elements: int) -> list[ImageInput]:
    name = tensor.name
    if len(shape) != 4 or any(d < 1 for d in shape) or (name == "images" and shape[3] != 3):
        raise InvalidInputError(f"input {name!r} has shape {shape[:8]}; it must be {INPUTS[name][1]}")
    tensor_elements(shape[1:], max_elements=max_elements, what=f"input {name!r} (one image)")
    elements = tensor_elements(shape, max_elements=shape[0] * max_elements, what=f"input {name!r}")
    dtype = np.dtype("uint8") if name == "images" else np.dtype("<f4")
    if raw is not None:
        if len(raw) != elements * dtype.itemsize:
            raise InvalidInputError(
                f"unexpected total byte size {len(raw)} for input {name!r}, expecting {elements * dtype.itemsize} "
                f"for shape {shape} of {tensor.datatype}"
            )
        data = np.frombuffer(raw, dtype=dtype)
    else:
        typed = tensor.contents.uint_contents if name == "images" else tensor.contents.fp32_contents
        if len(typed) != elements:
            raise InvalidInputError(
                f"input {name!r} of shape {shape} needs {elements} values in its contents but holds {len(typed)}"
            )
        if name == "images" and typed and max(typed) > 255:
            raise InvalidInputError("input 'images' holds values above 255; UINT8 pixels are 0..255")
        data = np.asarray(typed, dtype=dtype)
    batch = data.reshape(shape)
    kind = "uint8" if name == "images" else "float32"
    return [ImageInput(kind, array=batch[i]) for i in range(shape[0])]


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: bytes


def build_outputs(handler, predictions: list[ImagePrediction], wanted: list[tuple[str, int]]) -> list[OutputTensor]:
    """The requested outputs (name, classification k or 0) for a batch of
    predictions, as the model's task handler encodes them."""
    return [handler.oip_output(name, predictions, k) for name, k in wanted]
