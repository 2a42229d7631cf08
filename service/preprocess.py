"""Images to model inputs, exactly as the artifact records.

* `read_header` is the front end's check: format, encoded size, pixel count
  and EXIF orientation from the header alone, so a decompression bomb costs
  nothing and no pixel is decoded where requests arrive.
* `PreprocessSpec.resize_target` and `.geometry` say, from an image's size
  alone, what it is resized to and how model-input pixels map back to it
  (the front end needs the geometry for boxes; the device side resizes
  every decoded image, full or reduced, to exactly that size).
* `decode_image` decodes fully (RGB uint8 HWC, EXIF orientation applied);
  `prepare` resizes, crops and normalises one image with torchvision's
  tensor ops on any device. Batches are prepared by `pixels`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from framewire.exporter import format as fmt
from framewire.v1 import artifact_pb2 as pb

from .errors import InvalidInputError

#: Encoded formats accepted from clients (PIL format names).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})

# framewire checks every image's header against --max-image-pixels before
# decoding it; PIL's own global limit would answer first with a message that
# names neither the limit nor the flag.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class PreprocessSpec:
    """The artifact's preprocessing, as plain values."""

    resize_mode: int
    resize_shorter: int
    height: int
    width: int
    interpolation: str
    antialias: bool
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    bgr: bool

    @classmethod
    def from_artifact(cls, artifact: pb.ModelArtifact) -> "PreprocessSpec":
        pre, inp = artifact.preprocessing, artifact.input
        return cls(
            resize_mode=pre.resize_mode,
            resize_shorter=pre.resize_shorter,
            height=inp.height,
            width=inp.width,
            interpolation=fmt.INTERPOLATION_NAMES.get(pre.interpolation, "bilinear"),
            antialias=pre.antialias,
            scale=pre.scale,
            mean=tuple(pre.mean),
            std=tuple(pre.std),
            channels=inp.channels,
            bgr=inp.color_order == pb.COLOR_ORDER_BGR,
        )

    @property
    def fixed_size(self) -> bool:
        """Whether every image comes out at the model's height x width."""
        return self.resize_mode != pb.RESIZE_MODE_NONE

    def resize_target(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to before the
        crop, as torchvision's Resize computes it (the image's own size when
        the model does not resize)."""
        if self.resize_mode == pb.RESIZE_MODE_SHORTER_SIDE:
            size = self.resize_shorter
            if width <= height:
                return int(size * height / width), size
            return size, int(size * width / height)
        if self.resize_mode == pb.RESIZE_MODE_EXACT:
            return self.height, self.width
        return height, width

    def geometry(self, height: int, width: int) -> "Geometry":
        """How an image of this size maps onto the model input."""
        rh, rw = self.resize_target(height, width)
        if self.resize_mode == pb.RESIZE_MODE_SHORTER_SIDE:
            return Geometry(height, width, rh / height, rw / width, _crop_offset(rh, self.height),
                            _crop_offset(rw, self.width))
        return Geometry(height, width, rh / height, rw / width, 0, 0)


@dataclass(frozen=True)
class Geometry:
    """How an original image maps onto the model input (for boxes)."""

    original_height: int
    original_width: int
    scale_y: float
    scale_x: float
    offset_y: int
    offset_x: int

    def to_original(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A model-input xyxy box in original pixel coordinates, clipped."""
        x1, y1, x2, y2 = box
        ox = lambda v: min(max((v + self.offset_x) / self.scale_x, 0.0), float(self.original_width))
        oy = lambda v: min(max((v + self.offset_y) / self.scale_y, 0.0), float(self.original_height))
        return ox(x1), oy(y1), ox(x2), oy(y2)


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header says; `height` and `width` are as
    displayed (after its EXIF orientation)."""

    format: str
    height: int
    width: int
    orientation: int = 1


#: EXIF orientations that swap height and width.
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def read_header(data, *, max_pixels: int, max_bytes: int) -> ImageHeader:
    """Check an encoded image from its header alone; no pixel is decoded.

    Raises InvalidInputError with what to fix: empty data, too many bytes, an
    unknown format, or a header claiming more than `max_pixels`.
    """
    img = _open(data, max_bytes=max_bytes)
    with img:
        width, height = img.size
        check_pixels(height, width, max_pixels)
        # The base class reads EXIF from the header; PNG's own getexif would
        # decode the whole image to look for a chunk after the pixels.
        orientation = Image.Image.getexif(img).get(0x0112, 1)
        if not isinstance(orientation, int) or not 1 <= orientation <= 8:
            orientation = 1
        if orientation in TRANSPOSING_ORIENTATIONS:
            height, width = width, height
        return ImageHeader(img.format, height, width, orientation)


def _open(data, *, max_bytes: int):
    if not len(data):
        raise InvalidInputError("image is empty (0 bytes); send JPEG, PNG, WebP or BMP bytes")
    if len(data) > max_bytes:
        raise InvalidInputError(
            f"encoded image is {len(data)} bytes; the limit is {max_bytes} (--max-image-bytes)"
        )
    try:
        return Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
    except Exception:  # PIL raises UnidentifiedImageError, OSError, ValueError, SyntaxError
        raise InvalidInputError(
            f"image data ({len(data)} bytes, starting {bytes(data[:8]).hex()}) is not a readable "
            "JPEG, PNG, WebP or BMP file"
        ) from None


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Encoded JPEG/PNG/WebP/BMP bytes to an RGB uint8 HWC array.

    Raises InvalidInputError with what to fix: empty data, too many bytes, an
    unknown or corrupt format, or a header claiming more than `max_pixels`
    (checked before decoding, so decompression bombs cost nothing).
    """
    img = _open(data, max_bytes=max_bytes)
    with img:
        width, height = img.size
        check_pixels(height, width, max_pixels)
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = img.convert("RGB")
        except Exception as exc:  # truncated or corrupt pixel data
            raise InvalidInputError(
                f"{img.format or 'image'} data is corrupt or truncated ({exc}); send a complete file"
            ) from None
    return np.array(rgb)


def check_pixels(height: int, width: int, max_pixels: int) -> None:
    """Refuse images larger than the pixel limit, naming both numbers."""
    if height < 1 or width < 1:
        raise InvalidInputError(f"image is {width}x{height} pixels; it must be at least 1x1")
    if height * width > max_pixels:
        raise InvalidInputError(
            f"image is {width}x{height} pixels ({height * width / 1e6:.1f} megapixels); the limit "
            f"is {max_pixels / 1e6:.1f} megapixels (--max-image-pixels)"
        )


def prepare(rgb, spec: PreprocessSpec, device=None):
    """An RGB uint8 image (HWC numpy array or CHW tensor) to a float32 CHW
    model input, plus its Geometry. Runs on `device` when given."""
    import torch
    from torchvision.transforms.v2 import functional as F
    from torchvision.transforms.v2 import InterpolationMode

    if isinstance(rgb, np.ndarray):
        if not rgb.flags.writeable:  # a view of request bytes; torch wants its own memory
            rgb = rgb.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    else:
        tensor = rgb
    if device is not None:
        tensor = tensor.to(device, non_blocking=True)
    _, h, w = tensor.shape
    interpolation = InterpolationMode(spec.interpolation)
    scale_y = scale_x = 1.0
    off_y = off_x = 0
    if spec.resize_mode == pb.RESIZE_MODE_SHORTER_SIDE:
        tensor = F.resize(tensor, [spec.resize_shorter], interpolation=interpolation, antialias=spec.antialias)
        rh, rw = tensor.shape[-2:]
        scale_y, scale_x = rh / h, rw / w
        off_y, off_x = _crop_offset(rh, spec.height), _crop_offset(rw, spec.width)
        tensor = F.center_crop(tensor, [spec.height, spec.width])
    elif spec.resize_mode == pb.RESIZE_MODE_EXACT:
        tensor = F.resize(tensor, [spec.height, spec.width], interpolation=interpolation, antialias=spec.antialias)
        scale_y, scale_x = spec.height / h, spec.width / w
    if spec.channels == 1:
        tensor = F.rgb_to_grayscale(tensor)
    elif spec.bgr:
        tensor = tensor.flip(0)
    out = tensor.to(torch.float32).mul_(spec.scale)
    out = F.normalize(out, mean=list(spec.mean), std=list(spec.std))
    return out, Geometry(h, w, scale_y, scale_x, off_y, off_x)


def _crop_offset(size: int, crop: int) -> int:
    # torchvision's centre crop rounds the offset this way.
    return int(round((size - crop) / 2.0))
