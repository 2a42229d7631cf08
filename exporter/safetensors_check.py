"""Validation of a safetensors blob's header, before any tensor is built.

The safetensors library checks much of this too; doing it here first gives
each problem a precise message and keeps absurd values (a header length of
2^60) from ever reaching an allocator.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from .errors import SafetensorsHeaderError

#: Bytes per element for every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

#: The safetensors library refuses headers over 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """One tensor described by the header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_header(blob: bytes, path: str | None = None) -> dict[str, TensorEntry]:
    """Check a safetensors blob's header and return its tensor entries.

    Raises SafetensorsHeaderError naming the first inconsistency: a header
    length past the blob, JSON that is not an object, an unknown dtype, a
    shape that disagrees with the byte range, ranges that overlap, leave gaps
    or run past the data.
    """

    def fail(message: str) -> SafetensorsHeaderError:
        return SafetensorsHeaderError(
            f"weights blob: {message}; the file is damaged or was not written by "
            "framewire, re-export the model",
            path,
        )

    if len(blob) < 8:
        raise fail(f"{len(blob)} bytes is too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > MAX_HEADER_BYTES:
        raise fail(f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_len > len(blob):
        raise fail(f"header length {header_len} runs past the end of the {len(blob)}-byte blob")
    try:
        header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")

    data_len = len(blob) - 8 - header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                raise fail("__metadata__ must map strings to strings")
            continue
        entries[name] = _parse_entry(name, info, data_len, fail)

    cursor = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin < cursor:
            raise fail(f"tensor {entry.name!r} overlaps the tensor before it (offset {entry.begin} < {cursor})")
        if entry.begin > cursor:
            raise fail(f"gap of {entry.begin - cursor} bytes before tensor {entry.name!r}")
        cursor = entry.end
    if cursor != data_len:
        raise fail(f"tensors cover {cursor} bytes but the data section holds {data_len}")
    return entries


def _parse_entry(name: str, info: object, data_len: int, fail) -> TensorEntry:
    if not isinstance(info, dict):
        raise fail(f"entry {name!r} is not an object")
    dtype = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise fail(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise fail(f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise fail(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise fail(f"tensor {name!r} offsets [{begin}, {end}] fall outside the {data_len}-byte data section")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise fail(
            f"tensor {name!r} of shape {shape} and dtype {dtype} needs {expected} bytes "
            f"but its offsets span {end - begin}"
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)
