"""Compact payloads in shared memory: what the front end writes, what the worker sees."""

from __future__ import annotations

import mmap

import numpy as np

from framewire.service.payloads import Payload, gather, pack, packed_size, unpack
from support.images import encode, random_image


def uint8(seed: int, h: int = 224, w: int = 224) -> Payload:
    return Payload("uint8", random_image(seed, h, w), h, w)


def test_a_224x224_uint8_image_takes_h_w_3_bytes_of_shared_memory():
    payloads = [uint8(i) for i in range(8)]
    assert packed_size(payloads) == 8 * 224 * 224 * 3
    memory = mmap.mmap(-1, packed_size(payloads))
    assert pack(payloads, memory)["bytes"] == 8 * 224 * 224 * 3


def test_same_shape_images_are_one_contiguous_array_in_shared_memory():
    payloads = [uint8(0), uint8(1, 100, 80), uint8(2)]
    memory = mmap.mmap(-1, packed_size(payloads))
    batch = unpack(pack(payloads, memory), memory)
    by_rows = {tuple(g.rows): g for g in batch.groups}
    group = by_rows[(0, 2)]
    assert group.array.shape == (2, 224, 224, 3)
    assert np.shares_memory(group.array, np.frombuffer(memory, np.uint8))  # a view, no restack
    np.testing.assert_array_equal(group.array[1], payloads[2].data)
    np.testing.assert_array_equal(by_rows[(1,)].array[0], payloads[1].data)


def test_encoded_and_float_images_round_trip_with_their_header_facts():
    jpeg = encode(random_image(3), "JPEG")
    floats = np.random.default_rng(0).standard_normal((3, 8, 8)).astype("<f4")
    payloads = [Payload("float32", floats, 8, 8), Payload("encoded", jpeg, 64, 48, "JPEG", 6)]
    memory = mmap.mmap(-1, packed_size(payloads))
    header = pack(payloads, memory)
    assert all(g["offset"] % 64 == 0 for g in header["groups"]) and header["encoded"][0]["offset"] % 64 == 0
    batch = unpack(header, memory)
    (image,) = batch.encoded
    assert bytes(image.data) == jpeg and (image.row, image.format, image.height, image.width, image.orientation) == (
        1, "JPEG", 64, 48, 6)
    np.testing.assert_array_equal(batch.groups[0].array[0], floats)


def test_gather_builds_the_same_batch_in_process():
    payloads = [uint8(0, 10, 10), Payload("encoded", b"abc", 1, 1, "PNG"), uint8(1, 10, 10)]
    batch = gather(payloads)
    assert batch.size == 3 and [e.row for e in batch.encoded] == [1]
    (group,) = batch.groups
    assert group.rows == [0, 2] and group.array.shape == (2, 10, 10, 3) and group.array.flags.writeable
