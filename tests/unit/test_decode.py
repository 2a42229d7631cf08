"""Header checks in the front end, and the decoders next to the device: which
image goes to which decoder, EXIF orientation, and a refused JPEG falling back."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from framewire.service.decode import EncodedImage, JpegBatchDecoder, decode_pil, draft_size, orient, route
from framewire.service.errors import InvalidInputError
from framewire.service.preprocess import read_header
from support.images import encode, png_claiming, random_image


def jpeg_with_orientation(array: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def encoded(data: bytes, row: int = 0) -> EncodedImage:
    header = read_header(data, max_pixels=10**8, max_bytes=10**8)
    return EncodedImage(row, data, header.format, header.height, header.width, header.orientation)


def test_the_header_check_refuses_bombs_and_garbage_without_decoding():
    with pytest.raises(InvalidInputError, match=r"100000x100000 pixels \(10000.0 megapixels\)"):
        read_header(png_claiming(100000, 100000), max_pixels=1_000_000, max_bytes=10**6)
    with pytest.raises(InvalidInputError, match="--max-image-bytes"):
        read_header(encode(random_image(0)), max_pixels=10**6, max_bytes=10)
    with pytest.raises(InvalidInputError, match="image is empty"):
        read_header(b"", max_pixels=10**6, max_bytes=10)
    with pytest.raises(InvalidInputError, match="not a readable JPEG, PNG, WebP or BMP"):
        read_header(b"\xff\xd8\xff\xe0" + bytes(range(200)), max_pixels=10**6, max_bytes=10**6)
    whole = encode(random_image(1, 200, 300), "JPEG")
    truncated = whole[: len(whole) // 2]  # a whole header, half the pixels: only decoding notices
    assert read_header(truncated, max_pixels=10**6, max_bytes=10**6).format == "JPEG"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_both_decoders_matches_pil(orientation):
    stored = random_image(orientation, 20, 30)
    data = jpeg_with_orientation(stored, orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    image = encoded(data)
    assert (image.height, image.width) == expected.shape[:2]  # the front end reports the displayed size
    np.testing.assert_array_equal(np.asarray(decode_pil(image, max_pixels=10**6)), expected)
    raw = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    upright = orient(torch.from_numpy(raw).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(upright, expected)
    (decoded,) = JpegBatchDecoder("cpu")([image])  # torchvision's decoder leaves orientation to us
    assert tuple(decoded.shape) == (3, *expected.shape[:2])


def test_routing_complete_jpegs_to_the_batch_decoder_and_the_rest_to_pil():
    jpeg = encode(random_image(0, 600, 800), "JPEG")
    images = [encoded(jpeg, 0), encoded(encode(random_image(1)), 1), encoded(jpeg[: len(jpeg) // 2] + b"", 2),
              encoded(encode(random_image(2, 100, 100), "JPEG"), 3)]
    plan = route(images, batch_jpeg=True)
    assert [i.row for i in plan.batch_jpeg] == [0, 3] and [i.row for i in plan.pil] == [1, 2]
    assert [i.row for i in route(images, batch_jpeg=False).pil] == [0, 1, 2, 3]
    # Reduced-size decoding is PIL's: an image at least twice the target goes there.
    plan = route(images, batch_jpeg=True, draft=lambda i: draft_size(i, (256, 256)))
    assert [i.row for i in plan.batch_jpeg] == [3] and 0 in [i.row for i in plan.pil]


def test_draft_applies_only_to_jpegs_at_least_twice_the_target():
    big = EncodedImage(0, b"", "JPEG", 1080, 1920, 1)
    assert draft_size(big, (256, 455)) == (455, 256)
    assert draft_size(EncodedImage(0, b"", "JPEG", 500, 375, 1), (256, 341)) is None
    assert draft_size(EncodedImage(0, b"", "PNG", 1080, 1920, 1), (256, 455)) is None
    rotated = EncodedImage(0, b"", "JPEG", 1920, 1080, 6)  # stored landscape, displayed portrait
    assert draft_size(rotated, (455, 256)) == (455, 256)


def test_a_batch_decoder_refusal_falls_back_for_that_image_only():
    from torchvision.io import decode_jpeg

    calls = []

    def refuses_the_second(data, mode, device):  # nvJPEG's behaviour: one bad image fails the whole call
        calls.append(len(data))
        if any(len(d) == len(second) for d in data):
            raise RuntimeError("nvjpegDecodeBatched failed: unsupported JPEG")
        return decode_jpeg(data, mode=mode, device=device)

    first, second = encode(random_image(0), "JPEG"), encode(random_image(1, 60, 50), "JPEG", quality=50)
    decoded = JpegBatchDecoder("cpu", refuses_the_second)([encoded(first, 0), encoded(second, 1)])
    assert calls == [2, 1, 1] and decoded[1] is None and tuple(decoded[0].shape) == (3, 48, 64)


def test_real_corrupt_data_fails_the_batch_call_and_is_found_image_by_image():
    good = encode(random_image(0, 64, 64), "JPEG")
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 400] = b"\xff" * 400
    decoded = JpegBatchDecoder("cpu")([encoded(good, 0), EncodedImage(1, bytes(corrupt), "JPEG", 64, 64)])
    assert decoded[0] is not None
    assert decoded[1] is None or tuple(decoded[1].shape) == (3, 64, 64)  # refused, or decoded as it is


def test_pil_reports_corrupt_data_as_clients_know_it():
    data = encode(random_image(0), "JPEG")
    with pytest.raises(InvalidInputError, match=r"JPEG data is corrupt or truncated \(.*\); send a complete file"):
        decode_pil(EncodedImage(0, data[: len(data) // 3], "JPEG", 48, 64), max_pixels=10**6)
