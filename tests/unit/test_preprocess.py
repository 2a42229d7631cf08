"""Decoding limits, preprocessing as recorded, and boxes back to original pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framewire.service.domain import ImageInput
from framewire.service.errors import InvalidInputError
from framewire.service.preprocess import Geometry, PreprocessSpec, decode_image, prepare
from framewire.v1 import artifact_pb2 as pb
from support.images import encode, png_claiming, random_image


def spec(**kw) -> PreprocessSpec:
    values = dict(resize_mode=pb.RESIZE_MODE_SHORTER_SIDE, resize_shorter=40, height=32, width=32,
                  interpolation="bilinear", antialias=True, scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3,
                  channels=3, bgr=False)
    values.update(kw)
    return PreprocessSpec(**values)


def test_decode_checks_the_pixel_limit_from_the_header():
    with pytest.raises(InvalidInputError, match=r"100000x100000 pixels \(10000.0 megapixels\); the limit is 1.0"):
        decode_image(png_claiming(100000, 100000), max_pixels=1_000_000, max_bytes=10**6)


def test_decode_checks_the_byte_limit():
    with pytest.raises(InvalidInputError, match="--max-image-bytes"):
        decode_image(encode(random_image(0)), max_pixels=10**6, max_bytes=10)


def test_decode_refuses_other_formats():
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(random_image(0)).save(buf, format="GIF")
    with pytest.raises(InvalidInputError, match="not a readable JPEG, PNG, WebP or BMP"):
        decode_image(buf.getvalue(), max_pixels=10**6, max_bytes=10**6)


def test_grayscale_and_rgba_become_rgb():
    gray = encode(random_image(1)[:, :, 0])
    rgba = encode(np.dstack([random_image(2), np.full((48, 64), 255, np.uint8)]))
    assert decode_image(gray, max_pixels=10**6, max_bytes=10**6).shape == (48, 64, 3)
    assert decode_image(rgba, max_pixels=10**6, max_bytes=10**6).shape == (48, 64, 3)


def test_prepare_matches_torchvision_transforms():
    from torchvision.transforms import v2

    image = random_image(3, 60, 90)
    out, geometry = prepare(image, spec())
    reference = v2.Compose([
        v2.Resize(40, antialias=True), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * 3, [0.5] * 3),
    ])(torch.from_numpy(image).permute(2, 0, 1))
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)
    assert (geometry.original_height, geometry.original_width) == (60, 90)


def test_bgr_models_get_channels_flipped():
    image = random_image(4, 32, 32)
    rgb, _ = prepare(image, spec(resize_mode=pb.RESIZE_MODE_NONE))
    bgr, _ = prepare(image, spec(resize_mode=pb.RESIZE_MODE_NONE, bgr=True))
    torch.testing.assert_close(bgr, rgb.flip(0))


def test_geometry_maps_boxes_back_through_resize_and_crop():
    _, geometry = prepare(random_image(5, 100, 200), spec(resize_shorter=50, height=50, width=50))
    # resized to 50x100, cropped 25 px from the left: input (0,0)-(50,50) is original (50,0)-(150,100)
    assert geometry.to_original((0, 0, 50, 50)) == pytest.approx((50, 0, 150, 100))
    clipped = Geometry(10, 10, 1.0, 1.0, 0, 0).to_original((-5, -5, 20, 20))
    assert clipped == (0, 0, 10, 10)


@pytest.mark.parametrize("dtype, shape, size, message", [
    ("uint8", (4, 4, 3), 47, "needs 48 bytes but 47"),
    ("uint8", (4, 4, 4), 64, r"\[H, W, 3\]"),
    ("float32", (2, 2), 16, r"\[C, H, W\]"),
    ("int16", (2,), 4, "not accepted"),
    ("uint8", (10**5, 10**5, 3), 0, "elements; the limit"),
])
def test_raw_tensors_are_checked(dtype, shape, size, message):
    with pytest.raises(InvalidInputError, match=message):
        ImageInput.from_tensor(dtype, shape, bytes(size), max_elements=10**8)


def test_a_batched_tensor_of_one_is_accepted():
    image = ImageInput.from_tensor("uint8", (1, 4, 5, 3), bytes(60), max_elements=10**6)
    assert image.kind == "uint8" and image.array.shape == (4, 5, 3)
