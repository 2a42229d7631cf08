"""Decoding on the GPU: nvJPEG batches, EXIF orientation, fallback to PIL,
fidelity of float16 serving, and a corrupt image in a shared GPU batch."""

from __future__ import annotations

import concurrent.futures as cf
import io

import grpc
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from framewire.client import Client, FramewireError
from framewire.service.decode import EncodedImage, JpegBatchDecoder
from framewire.service.preprocess import read_header
from support.images import encode, random_image
from support.server import RunningServer

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def encoded(data: bytes, row: int = 0) -> EncodedImage:
    header = read_header(data, max_pixels=10**8, max_bytes=10**8)
    return EncodedImage(row, data, header.format, header.height, header.width, header.orientation)


def test_nvjpeg_decodes_a_batch_upright_and_close_to_pil():
    images = []
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        Image.fromarray(random_image(orientation, 60, 90)).save(buf, format="JPEG", quality=95, exif=exif)
        images.append(buf.getvalue())
    decoded = JpegBatchDecoder(torch.device("cuda:0"))([encoded(d, i) for i, d in enumerate(images)])
    for data, tensor in zip(images, decoded):
        assert tensor.is_cuda
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        got = tensor.permute(1, 2, 0).cpu().numpy()
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2.0  # IDCT and upsampling differ slightly


def test_a_jpeg_nvjpeg_refuses_falls_back_for_that_image_only():
    cmyk = io.BytesIO()
    Image.fromarray(random_image(0, 40, 40)).convert("CMYK").save(cmyk, format="JPEG")
    good = encode(random_image(1, 40, 60), "JPEG")
    decoded = JpegBatchDecoder(torch.device("cuda:0"))([encoded(good, 0), encoded(cmyk.getvalue(), 1)])
    assert decoded[0] is not None and tuple(decoded[0].shape) == (3, 40, 60)
    # nvJPEG may refuse CMYK (then PIL decodes it) or decode it; either way the good image is intact.
    assert decoded[1] is None or tuple(decoded[1].shape) == (3, 40, 40)


def canonical_probabilities(artifact, photos: dict[str, bytes]) -> dict[str, torch.Tensor]:
    from torchvision import transforms as T

    from framewire.exporter import load_model
    from framewire.service.preprocess import PreprocessSpec

    loaded = load_model(artifact)
    spec = PreprocessSpec.from_artifact(loaded.artifact)
    pipeline = T.Compose([T.Resize(spec.resize_shorter), T.CenterCrop((spec.height, spec.width)), T.ToTensor(),
                          T.Normalize(spec.mean, spec.std)])
    batch = torch.stack([pipeline(Image.open(io.BytesIO(d)).convert("RGB")) for d in photos.values()])
    with torch.inference_mode():
        return dict(zip(photos, torch.softmax(loaded.module(batch), 1)))


def test_float16_serving_on_the_gpu_is_within_1e_2_of_the_canonical_pipeline(demo_repo, demo_artifact):
    import skimage.data

    photos = {name: encode(getattr(skimage.data, name)(), "JPEG", quality=95) for name in PHOTOS}
    expected = canonical_probabilities(demo_artifact, photos)
    with RunningServer(repo=str(demo_repo), device="cuda", dtype="float16", max_batch_size=8) as server, \
            Client(server.address) as c:
        served = dict(zip(photos, c.batch_predict(list(photos.values()), model="efficientnet_lite0", top_k=1)))
    for name, prediction in served.items():
        top = int(expected[name].argmax())
        assert prediction.top.index == top, name
        assert abs(prediction.top.score - float(expected[name][top])) <= 1e-2, name


@pytest.mark.parametrize("jpeg_draft", [False, True])
def test_a_corrupt_jpeg_fails_only_its_own_request_in_a_gpu_batch(demo_repo, jpeg_draft):
    with RunningServer(repo=str(demo_repo), device="cuda", max_batch_size=3, max_queue_delay_us=60_000_000,
                       jpeg_draft=jpeg_draft) as server:
        good = encode(random_image(1, 1080, 1920), "JPEG")
        images = [good, good[: len(good) // 2], encode(random_image(2, 375, 500), "JPEG")]

        def one(image):
            with Client(server.address, retries=0) as c:
                try:
                    return c.predict(image, model="efficientnet_lite0")
                except FramewireError as exc:
                    return exc

        with cf.ThreadPoolExecutor(3) as pool:
            first, corrupt, last = pool.map(one, images)
    assert isinstance(corrupt, FramewireError) and corrupt.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "corrupt or truncated" in str(corrupt)
    assert first.timing["batch_size"] == last.timing["batch_size"] == 3
    assert (first.width, first.height) == (1920, 1080)
