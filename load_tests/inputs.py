"""Images to send: generated JPEGs, a folder of files, or raw tensors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def describe(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    return {"jpeg": f"JPEG {rest}", "folder": f"files from {rest}", "uint8": f"uint8 {rest}",
            "float32": f"float32 {rest} preprocessed"}.get(kind, spec)


def _size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '500x375' -> (width 500, height 375)."""
    if "x" in text:
        w, h = text.split("x")
        return int(w), int(h)
    return int(text), int(text)


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB image with the smooth structure of a photo (so it compresses
    like one): random low-resolution colour fields, upsampled, with grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, smooth.shape, dtype=np.int16)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def make_images(spec: str, count: int = 8) -> list:
    """Protobuf Images for `spec`:

    - `jpeg:WxH` generated photo-like JPEGs (quality 90), e.g. `jpeg:500x375`;
    - `folder:PATH` the image files in PATH (recursively), sent encoded;
    - `uint8:S` or `uint8:WxH` RGB arrays, preprocessed by the server;
    - `float32:S` already preprocessed 3xSxS tensors.
    """
    from PIL import Image

    from framewire.client import image_message

    kind, _, rest = spec.partition(":")
    if kind == "folder":
        files = sorted(p for p in Path(rest).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"no images under {rest}")
        return [image_message(p) for p in files[: max(count, 1) * 16]]
    images = []
    for i in range(count):
        if kind == "jpeg":
            w, h = _size(rest)
            buf = io.BytesIO()
            Image.fromarray(photo_like(w, h, i)).save(buf, format="JPEG", quality=90)
            images.append(image_message(buf.getvalue()))
        elif kind == "uint8":
            w, h = _size(rest)
            images.append(image_message(photo_like(w, h, i)))
        elif kind == "float32":
            s = int(rest)
            rng = np.random.default_rng(i)
            images.append(image_message(rng.standard_normal((3, s, s)).astype(np.float32)))
        else:
            raise SystemExit(f"unknown input {spec!r}: use jpeg:WxH, folder:PATH, uint8:S or float32:S")
    return images
