"""Compact payloads: images as they travel from the front end to the device.

The front end checks an image's header and hands on a `Payload`: encoded
bytes as the client sent them, the client's uint8 [H, W, 3] pixels, or the
client's float32 [C, H, W] tensor. Nothing is decoded or converted there.

Next to the device a batch is a `BatchInput`: its encoded images, and its
same-shape uint8 or float32 images as `DenseGroup`s, each one contiguous
[n, ...] array. `pack` writes a batch into shared memory that way (a
group's images back to back, so the worker views them as one array with no
split and restack) and returns the header that describes it; `unpack`
rebuilds the views on the other side; `gather` builds the same thing in
process for the thread runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .decode import EncodedImage

#: Offsets in shared memory are multiples of this (vector loads, cache lines).
ALIGN = 64
_DTYPES = {"uint8": np.dtype("uint8"), "float32": np.dtype("<f4")}


@dataclass(frozen=True)
class Payload:
    """One image on its way to the device.

    `kind` is "encoded" (`data` the file's bytes, `format` its PIL format,
    `orientation` its EXIF orientation), "uint8" (`data` an [H, W, 3] RGB
    array) or "float32" (`data` a preprocessed [C, H, W] array). `height`
    and `width` are the image's as displayed.
    """

    kind: str
    data: Any
    height: int
    width: int
    format: str = ""
    orientation: int = 1

    @property
    def nbytes(self) -> int:
        """Bytes this image takes in shared memory."""
        return len(self.data) if self.kind == "encoded" else int(self.data.nbytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape) if self.kind != "encoded" else ()


@dataclass
class DenseGroup:
    """Same-shape images of one kind, contiguous: uint8 [n, H, W, 3] or float32 [n, C, H, W]."""

    kind: str
    array: np.ndarray
    rows: list[int]


@dataclass
class BatchInput:
    """A batch next to the device: `size` images, by row."""

    size: int
    groups: list[DenseGroup] = field(default_factory=list)
    encoded: list[EncodedImage] = field(default_factory=list)

    @property
    def kinds(self) -> set[str]:
        return {g.kind for g in self.groups} | ({"encoded"} if self.encoded else set())


def _groups(payloads: Sequence[Payload]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for row, p in enumerate(payloads):
        if p.kind != "encoded":
            groups.setdefault((p.kind, p.shape), []).append(row)
    return groups


def _encoded(row: int, p: Payload, data) -> EncodedImage:
    return EncodedImage(row, data, p.format, p.height, p.width, p.orientation)


def gather(payloads: Sequence[Payload]) -> BatchInput:
    """A batch in this process (the thread runner): each group stacked into
    memory of its own (the one copy shared memory would have made), encoded
    bytes as they are."""
    batch = BatchInput(len(payloads))
    for (kind, _), rows in _groups(payloads).items():
        batch.groups.append(DenseGroup(kind, np.stack([payloads[r].data for r in rows]), rows))
    batch.encoded = [_encoded(row, p, p.data) for row, p in enumerate(payloads) if p.kind == "encoded"]
    return batch


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def packed_size(payloads: Sequence[Payload]) -> int:
    """Bytes of shared memory `pack` needs for a batch."""
    return sum(_aligned(p.nbytes) for p in payloads)


def pack(payloads: Sequence[Payload], memory) -> dict:
    """Write a batch into `memory` (a writable buffer of at least
    `packed_size` bytes); returns the header describing it."""
    target = np.frombuffer(memory, dtype=np.uint8)
    offset = 0
    groups = []
    for (kind, shape), rows in _groups(payloads).items():
        dtype = _DTYPES[kind]
        count = math.prod(shape) * len(rows)
        view = target[offset : offset + count * dtype.itemsize].view(dtype).reshape(len(rows), *shape)
        for i, row in enumerate(rows):
            np.copyto(view[i], payloads[row].data, casting="no")
        groups.append({"kind": kind, "shape": [len(rows), *shape], "offset": offset, "rows": rows})
        offset += _aligned(view.nbytes)
    encoded = []
    for row, p in enumerate(payloads):
        if p.kind != "encoded":
            continue
        size = len(p.data)
        target[offset : offset + size] = np.frombuffer(p.data, dtype=np.uint8)
        encoded.append({"row": row, "offset": offset, "size": size, "format": p.format, "height": p.height,
                        "width": p.width, "orientation": p.orientation})
        offset += _aligned(size)
    return {"size": len(payloads), "groups": groups, "encoded": encoded, "bytes": offset}


def unpack(header: dict, memory) -> BatchInput:
    """The batch a `pack` header describes, as views of `memory` (no copy)."""
    source = memoryview(memory)
    batch = BatchInput(int(header["size"]))
    for g in header["groups"]:
        dtype = _DTYPES[g["kind"]]
        shape = tuple(int(d) for d in g["shape"])
        array = np.frombuffer(source, dtype=dtype, count=math.prod(shape), offset=int(g["offset"])).reshape(shape)
        batch.groups.append(DenseGroup(g["kind"], array, [int(r) for r in g["rows"]]))
    for e in header["encoded"]:
        start = int(e["offset"])
        batch.encoded.append(EncodedImage(int(e["row"]), source[start : start + int(e["size"])], e["format"],
                                          int(e["height"]), int(e["width"]), int(e["orientation"])))
    return batch
