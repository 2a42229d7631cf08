"""Decoding encoded images next to the device, one batch at a time.

Two decoders:

* **PIL** on CPU threads (`decode_pil`), for every format, with optional
  reduced-size decoding of JPEGs (`Image.draft`: 1/2, 1/4 or 1/8 scale in
  the DCT domain) when the image is at least twice what the model resizes
  it to. PIL releases the GIL while it decodes, so a thread pool scales.
* **torchvision's JPEG decoder** (`JpegBatchDecoder`): every JPEG of a
  batch in one `decode_jpeg(list, device=...)` call, which is nvJPEG on
  CUDA. It does not apply EXIF orientation on CUDA (`orient` does, on the
  device), and a batch call returns nothing when one image fails, so a
  failed call is retried image by image and only the images it refuses
  fall back to PIL, one by one.

`route` decides which images go where. Orientation always comes from the
front end's header read (`preprocess.read_header`), so the size the front
end reported and the pixels the device sees agree by construction.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from .errors import InvalidInputError
from .preprocess import TRANSPOSING_ORIENTATIONS, check_pixels

# torchvision 0.29 deprecates its decoders in favour of TorchCodec with a
# warning on every call; 0.26 (the GPU image's) does not.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")

#: PIL transposes that undo each EXIF orientation (as ImageOps.exif_transpose).
_PIL_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class EncodedImage:
    """One encoded image of a batch, with what its header said."""

    row: int
    data: object  # bytes, or a memoryview of shared memory
    format: str
    height: int  # as displayed, after orientation
    width: int
    orientation: int = 1


def draft_size(image: EncodedImage, target: tuple[int, int]) -> tuple[int, int] | None:
    """The size to ask PIL's JPEG draft mode for, in the file's stored
    orientation, or None when the image is not a JPEG at least twice the
    `target` (height, width) in both directions."""
    height, width = target
    if image.format != "JPEG" or image.height < 2 * height or image.width < 2 * width:
        return None
    if image.orientation in TRANSPOSING_ORIENTATIONS:
        height, width = width, height
    return width, height


def decode_pil(image: EncodedImage, *, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """An encoded image as an upright RGB PIL image (decoded at reduced size
    when `draft` gives the smallest (width, height) wanted)."""
    try:
        img = Image.open(io.BytesIO(image.data))
    except Exception:
        raise InvalidInputError(
            f"image data ({len(image.data)} bytes, starting {bytes(image.data[:8]).hex()}) is not a readable "
            "JPEG, PNG, WebP or BMP file"
        ) from None
    with img:
        check_pixels(img.size[1], img.size[0], max_pixels)
        try:
            if draft is not None:
                img.draft("RGB", draft)
            img.load()
            rgb = img.convert("RGB")
        except Exception as exc:  # truncated or corrupt pixel data
            raise InvalidInputError(
                f"{img.format or 'image'} data is corrupt or truncated ({exc}); send a complete file"
            ) from None
    method = _PIL_TRANSPOSE.get(image.orientation)
    return rgb.transpose(method) if method is not None else rgb


def orient(tensor, orientation: int):
    """A [C, H, W] tensor as displayed under its EXIF orientation (the
    tensor counterpart of ImageOps.exif_transpose, for any device)."""
    import torch

    if orientation == 2:
        return tensor.flip(-1)
    if orientation == 3:
        return tensor.flip(-2, -1)
    if orientation == 4:
        return tensor.flip(-2)
    if orientation == 5:
        return tensor.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(tensor, -1, (-2, -1))
    if orientation == 7:
        return tensor.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(tensor, 1, (-2, -1))
    return tensor


def ends_complete(data) -> bool:
    """Whether JPEG data ends with its end-of-image marker. A truncated file
    goes to PIL, which refuses it with the message clients know; nvJPEG may
    decode what it has without complaint."""
    tail = bytes(data[-2:]) if len(data) >= 2 else b""
    return tail == b"\xff\xd9"


@dataclass(frozen=True)
class Route:
    """Which encoded images of a batch go to which decoder."""

    batch_jpeg: list[EncodedImage]
    pil: list[EncodedImage]


def route(images: Sequence[EncodedImage], *, batch_jpeg: bool, draft: Callable | None = None) -> Route:
    """Complete JPEGs to the batch decoder when there is one, unless `draft`
    (image -> draft size or None) says to decode them at reduced size, which
    only PIL does; everything else to PIL."""
    to_batch, to_pil = [], []
    for image in images:
        wants_draft = draft is not None and draft(image) is not None
        if batch_jpeg and image.format == "JPEG" and ends_complete(image.data) and not wants_draft:
            to_batch.append(image)
        else:
            to_pil.append(image)
    return Route(to_batch, to_pil)


class JpegBatchDecoder:
    """JPEGs to upright RGB uint8 [3, H, W] tensors on `device`, a batch per
    call (nvJPEG on CUDA). `decode` replaces torchvision.io.decode_jpeg."""

    def __init__(self, device, decode: Callable | None = None):
        self.device = device
        self._decode = decode

    def __call__(self, images: Sequence[EncodedImage]) -> list:
        """One tensor per image, or None where the decoder refused it."""
        import torch

        if not images:
            return []
        decode = self._decode or _torchvision_decode_jpeg()
        from torchvision.io import ImageReadMode

        data = [torch.frombuffer(_writable(i.data), dtype=torch.uint8) for i in images]
        try:
            decoded = list(decode(data, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            # The batch call fails whole; find the images it refuses.
            decoded = []
            for one in data:
                try:
                    decoded.append(decode([one], mode=ImageReadMode.RGB, device=self.device)[0])
                except RuntimeError:
                    decoded.append(None)
        return [None if t is None else orient(t, i.orientation) for t, i in zip(decoded, images)]


def _torchvision_decode_jpeg():
    from torchvision.io import decode_jpeg

    return decode_jpeg


def _writable(data):
    """torch.frombuffer wants writable memory: shared memory is; request bytes are copied."""
    view = memoryview(data)
    return bytearray(view) if view.readonly else view
