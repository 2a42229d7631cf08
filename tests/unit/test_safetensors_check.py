"""The safetensors header checks, one problem at a time."""

from __future__ import annotations

import json
import struct

import pytest

from framewire.exporter.errors import SafetensorsHeaderError
from framewire.exporter.safetensors_check import parse_header


def blob(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_a_valid_header_lists_its_tensors():
    entries = parse_header(
        blob(
            {
                "__metadata__": {"format": "pt"},
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
            },
            bytes(11),
        )
    )
    assert {e.name: (e.dtype, e.shape) for e in entries.values()} == {"a": ("F32", (2,)), "b": ("U8", (3,))}


@pytest.mark.parametrize(
    "header, data, message",
    [
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            bytes(12),
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "gap of 4 bytes"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12 bytes"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, bytes(8), "outside"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(10), "cover 8 bytes"),
        ({"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}, bytes(8), "invalid data_offsets"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ],
)
def test_inconsistent_headers_are_refused(header, data, message):
    with pytest.raises(SafetensorsHeaderError, match=message):
        parse_header(blob(header, data))


def test_a_header_length_of_two_to_the_sixtieth_is_refused_before_reading():
    with pytest.raises(SafetensorsHeaderError, match="header length 1152921504606846976 exceeds"):
        parse_header(struct.pack("<Q", 2**60) + b"{}")


def test_a_header_running_past_the_blob_is_refused():
    with pytest.raises(SafetensorsHeaderError, match="runs past the end"):
        parse_header(struct.pack("<Q", 50) + b"{}")


def test_a_header_that_is_not_json_is_refused():
    with pytest.raises(SafetensorsHeaderError, match="not valid JSON"):
        parse_header(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(SafetensorsHeaderError, match="too short"):
        parse_header(b"abc")
