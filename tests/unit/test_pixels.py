"""Batched decode and preprocessing next to the device, on both decode paths."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from framewire.service.payloads import Payload, gather
from framewire.service.pixels import BatchPreprocessor
from framewire.service.preprocess import PreprocessSpec, decode_image, prepare, read_header
from framewire.v1 import artifact_pb2 as pb
from support.images import encode, random_image

SPEC = PreprocessSpec(resize_mode=pb.RESIZE_MODE_SHORTER_SIDE, resize_shorter=40, height=32, width=32,
                      interpolation="bilinear", antialias=True, scale=1 / 255, mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), channels=3, bgr=False)
POOL = ThreadPoolExecutor(2)


def preprocessor(decoder: str, spec: PreprocessSpec = SPEC, **kw) -> BatchPreprocessor:
    return BatchPreprocessor(spec, stacked=kw.pop("stacked", True), device="cpu", dtype=torch.float32,
                             channels_last=True, pool=POOL, decoder=decoder, **kw)


def photo(seed: int, h: int, w: int) -> np.ndarray:
    """Smooth, photo-like pixels (resampling differences show on them as on photos)."""
    small = np.random.default_rng(seed).integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def jpeg_payload(array: np.ndarray) -> Payload:
    data = encode(array, "JPEG", quality=95)
    header = read_header(data, max_pixels=10**8, max_bytes=10**8)
    return Payload("encoded", data, header.height, header.width, header.format, header.orientation)


def canonical(img: Image.Image, spec: PreprocessSpec = SPEC) -> torch.Tensor:
    return T.Compose([T.Resize(spec.resize_shorter), T.CenterCrop((spec.height, spec.width)), T.ToTensor(),
                      T.Normalize(spec.mean, spec.std)])(img)


SIZES = [(60, 90), (90, 60), (37, 50), (120, 120)]  # landscape, portrait, upscaled, square


def test_the_cpu_exact_path_is_the_canonical_torchvision_pipeline():
    arrays = [photo(i, h, w) for i, (h, w) in enumerate(SIZES)]
    payloads = [jpeg_payload(a) for a in arrays] + [Payload("uint8", arrays[0], *arrays[0].shape[:2])]
    prepared = preprocessor("pil").prepare(gather(payloads))
    assert prepared.inputs.shape == (5, 3, 32, 32) and prepared.errors == {}
    assert prepared.inputs.is_contiguous(memory_format=torch.channels_last)
    for position, row in enumerate(prepared.rows):
        p = payloads[row]
        img = Image.open(io.BytesIO(p.data)).convert("RGB") if p.kind == "encoded" else Image.fromarray(p.data)
        torch.testing.assert_close(prepared.inputs[position], canonical(img), atol=1e-6, rtol=0)


def test_the_device_path_equals_torchvision_tensor_preprocessing():
    # The CUDA path's code run with torchvision's CPU decoder: decoding,
    # orientation, resizing frames of one size together, normalisation.
    arrays = [photo(i, h, w) for i, (h, w) in enumerate([*SIZES, (60, 90), (60, 90)])]
    payloads = [jpeg_payload(a) for a in arrays] + [Payload("uint8", arrays[1], *arrays[1].shape[:2]),
                                                    Payload("encoded", encode(arrays[2], "PNG"), 37, 50, "PNG")]
    prepared = preprocessor("torchvision").prepare(gather(payloads))
    assert sorted(prepared.rows) == list(range(len(payloads))) and prepared.errors == {}
    for position, row in enumerate(prepared.rows):
        p = payloads[row]
        rgb = decode_image(p.data, max_pixels=10**8, max_bytes=10**8) if p.kind == "encoded" else p.data
        expected, _ = prepare(rgb, SPEC)
        torch.testing.assert_close(prepared.inputs[position], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_a_corrupt_jpeg_fails_its_own_row_only(decoder):
    good = [jpeg_payload(photo(i, 60, 90)) for i in range(3)]
    data = good[0].data
    corrupt = Payload("encoded", data[: len(data) // 2], 60, 90, "JPEG")
    alone = preprocessor(decoder).prepare(gather(good))
    mixed = preprocessor(decoder).prepare(gather([good[0], corrupt, good[1], good[2]]))
    assert list(mixed.errors) == [1]
    assert "JPEG data is corrupt or truncated" in mixed.errors[1].message
    for row_mixed, row_alone in ((0, 0), (2, 1), (3, 2)):
        torch.testing.assert_close(mixed.inputs[mixed.rows.index(row_mixed)], alone.inputs[alone.rows.index(row_alone)])


def test_client_float_tensors_join_the_batch_as_they_are():
    floats = torch.randn(3, 32, 32)
    payloads = [jpeg_payload(photo(0, 60, 90)), Payload("float32", floats.numpy(), 32, 32)]
    prepared = preprocessor("pil").prepare(gather(payloads))
    assert prepared.rows == [0, 1]
    torch.testing.assert_close(prepared.inputs[1], floats)


def test_reduced_size_decoding_resizes_to_the_exact_target():
    big = photo(5, 400, 600)  # at least twice the 40-pixel resize target
    payload = jpeg_payload(big)
    exact = preprocessor("pil").prepare(gather([payload]))
    draft = preprocessor("pil", jpeg_draft=True).prepare(gather([payload]))
    assert draft.inputs.shape == exact.inputs.shape == (1, 3, 32, 32)
    difference = (draft.inputs - exact.inputs).abs()
    assert 0 < difference.max() < 1.0 and difference.mean() < 0.1  # other pixels, the same picture


def test_models_of_any_size_get_a_list_at_each_images_own_size():
    spec = PreprocessSpec(resize_mode=pb.RESIZE_MODE_NONE, resize_shorter=0, height=0, width=0,
                          interpolation="bilinear", antialias=True, scale=1 / 255, mean=(0.0,) * 3, std=(1.0,) * 3,
                          channels=3, bgr=False)
    arrays = [random_image(0, 30, 40), random_image(1, 50, 20)]
    payloads = [jpeg_payload(arrays[0]), Payload("uint8", arrays[1], 50, 20)]
    for decoder in ("pil", "torchvision"):
        prepared = preprocessor(decoder, spec, stacked=False).prepare(gather(payloads))
        assert [tuple(t.shape) for t in prepared.inputs] == [(3, 30, 40), (3, 50, 20)]
        torch.testing.assert_close(prepared.inputs[1], torch.from_numpy(arrays[1]).permute(2, 0, 1).float() / 255)
