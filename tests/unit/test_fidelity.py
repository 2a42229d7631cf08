"""Fidelity on real photos with the demo model (CPU, float32): the exact path
is the canonical torchvision pipeline; reduced-size decoding stays within
its documented bound (docs/request-path.md, "Reduced-size decoding")."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from framewire.exporter import load_model
from framewire.service.payloads import Payload, gather
from framewire.service.pixels import BatchPreprocessor
from framewire.service.preprocess import PreprocessSpec, read_header
from support.images import encode

#: Bundled scikit-image photos; the first four are at least twice the demo
#: model's 256-pixel resize, so reduced-size decoding applies to them.
PHOTOS = ("astronaut", "retina", "hubble_deep_field", "immunohistochemistry", "chelsea", "coffee", "rocket", "clock")


@pytest.fixture(scope="module")
def probabilities(demo_artifact):
    import skimage.data

    loaded = load_model(demo_artifact)
    spec = PreprocessSpec.from_artifact(loaded.artifact)
    jpegs = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        jpegs.append(encode(np.stack([array] * 3, -1) if array.ndim == 2 else array, "JPEG", quality=95))
    canonical = T.Compose([T.Resize(spec.resize_shorter), T.CenterCrop((spec.height, spec.width)), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    inputs = {"canonical": torch.stack([canonical(Image.open(io.BytesIO(d)).convert("RGB")) for d in jpegs])}
    payloads = []
    for data in jpegs:
        header = read_header(data, max_pixels=10**8, max_bytes=10**8)
        payloads.append(Payload("encoded", data, header.height, header.width, header.format, header.orientation))
    with ThreadPoolExecutor(2) as pool:
        for name, draft in (("exact", False), ("draft", True)):
            prepared = BatchPreprocessor(spec, stacked=True, device="cpu", dtype=torch.float32, channels_last=True,
                                         pool=pool, jpeg_draft=draft).prepare(gather(payloads))
            inputs[name] = prepared.inputs
    with torch.inference_mode():
        return {name: torch.softmax(loaded.module(x), 1) for name, x in inputs.items()}


def top1_difference(reference, other):
    top = reference.argmax(1)
    rows = torch.arange(len(top))
    return (reference[rows, top] - other[rows, top]).abs(), (other.argmax(1) == top)


def test_the_exact_path_is_within_1e_3_of_the_canonical_pipeline(probabilities):
    difference, agree = top1_difference(probabilities["canonical"], probabilities["exact"])
    assert agree.all()
    assert difference.max() <= 1e-3


def test_reduced_size_decoding_stays_within_its_documented_bound(probabilities):
    difference, agree = top1_difference(probabilities["exact"], probabilities["draft"])
    assert difference[:4].max() > 0  # it does change the photos it applies to...
    assert torch.equal(difference[4:], torch.zeros(4))  # ...and only those
    assert difference.max() <= 0.15
    assert agree.float().mean() >= 0.6
