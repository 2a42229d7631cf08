"""Batched decode and preprocessing next to the device.

`BatchPreprocessor.prepare` turns a `BatchInput` into the network's input
on its device, in the serving dtype and memory format:

* **CPU (PIL decoder).** Each image is decoded (at reduced size with
  `jpeg_draft` when it is at least twice the resize target), turned
  upright, resized and cropped on a thread of the decode pool, straight
  into its row of one uint8 [B, H, W, 3] buffer; the batch is then
  normalised in one pass. The resize is PIL's own when the artifact's
  interpolation is bilinear or bicubic with antialiasing, which makes the
  exact path the canonical torchvision pipeline on a PIL image (`Resize`,
  `CenterCrop`, `ToTensor`, `Normalize`); other modes, and images decoded at
  reduced size (no longer exact anyway), use torchvision's faster tensor
  resize.
* **Device (torchvision decoder; nvJPEG on CUDA).** The batch's JPEGs are
  decoded in one call on the device, other formats and refused JPEGs on
  CPU threads and uploaded as uint8; client uint8 pixels are uploaded as
  they came. Images of one size are resized and cropped together as one
  tensor on the device, then the batch is normalised there.

Float32 images the client preprocessed are only moved and converted. A
[B, H, W, 3] uint8 buffer seen as [B, 3, H, W] already has channels_last
strides, so normalising it needs no layout copy. An image that fails to
decode gets its error in `Prepared.errors`; its row stays zeros and the
batch goes on.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decode import EncodedImage, JpegBatchDecoder, decode_pil, draft_size, route
from .errors import ServiceError
from .payloads import BatchInput
from .preprocess import PreprocessSpec, _crop_offset, prepare

DECODERS = ("pil", "torchvision")


@dataclass
class Prepared:
    """A batch ready for the network: `inputs` holds the images of `rows`,
    in that order; `errors` the rows that failed (their pixels are zeros)."""

    inputs: Any
    rows: list[int]
    errors: dict[int, ServiceError] = field(default_factory=dict)
    ready: Any = None  # a CUDA event recorded when `inputs` is complete
    seconds: float = 0.0  # time spent preparing


def pil_resample(spec: PreprocessSpec):
    """The PIL filter that resizes exactly as the artifact records, or None
    (torchvision's tensor resize then)."""
    from PIL import Image

    if not spec.antialias:
        return None
    return {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}.get(spec.interpolation)


class BatchPreprocessor:
    """Decodes and preprocesses batches for one model on one device; see the module doc."""

    def __init__(self, spec: PreprocessSpec, *, stacked: bool, device, dtype, channels_last: bool, pool: Executor,
                 decoder: str = "pil", jpeg_draft: bool = False, max_pixels: int = 40_000_000, jpeg_decode=None):
        import torch

        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r} is not one of {DECODERS}")
        self.spec = spec
        self.stacked = stacked
        self.device = torch.device(device)
        self.dtype = dtype
        self.layout = torch.channels_last if channels_last and stacked else torch.contiguous_format
        self.pool = pool
        self.decoder = decoder
        self.jpeg_draft = jpeg_draft
        self.max_pixels = max_pixels
        self.resample = pil_resample(spec)
        self.jpeg = JpegBatchDecoder(self.device, jpeg_decode) if decoder == "torchvision" else None
        shape = (1, spec.channels, 1, 1)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(shape)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(shape)

    def prepare(self, batch: BatchInput) -> Prepared:
        """The network's input for `batch` (runs on the calling thread and the decode pool)."""
        return self._stacked(batch) if self.stacked else self._listed(batch)

    # ------------------------------------------------------------ stacked

    def _stacked(self, batch: BatchInput) -> Prepared:
        import torch

        errors: dict[int, ServiceError] = {}
        pixel_rows = sorted([e.row for e in batch.encoded] +
                            [r for g in batch.groups if g.kind == "uint8" for r in g.rows])
        parts, rows = [], []
        if pixel_rows:
            position = {row: i for i, row in enumerate(pixel_rows)}
            shape = (len(pixel_rows), self.spec.height, self.spec.width, 3)
            if self.jpeg is None:
                buffer = np.zeros(shape, np.uint8)
                self._fill_with_pil(batch, buffer, position, errors)
                pixels = torch.from_numpy(buffer)
            else:
                pixels = torch.zeros(shape, dtype=torch.uint8, device=self.device)
                self._fill_on_device(batch, pixels.permute(0, 3, 1, 2), position, errors)
            parts.append(self.normalise(pixels.to(self.device).permute(0, 3, 1, 2)))
            rows += pixel_rows
        for group in (g for g in batch.groups if g.kind == "float32"):
            tensor = torch.from_numpy(group.array).to(self.device, non_blocking=True)
            parts.append(tensor.to(dtype=self.dtype, memory_format=self.layout))
            rows += group.rows
        inputs = parts[0] if len(parts) == 1 else torch.cat(parts).contiguous(memory_format=self.layout)
        return Prepared(inputs, rows, errors)

    def normalise(self, pixels):
        """uint8 [n, 3, H, W] (any strides) to the network's input: colour
        order, scale, mean and std as the artifact records."""
        import torch
        from torchvision.transforms.v2 import functional as F

        if self.spec.channels == 1:
            pixels = F.rgb_to_grayscale(pixels)
        elif self.spec.bgr:
            pixels = pixels.flip(1)
        x = pixels.to(torch.float32).mul_(self.spec.scale)
        x.sub_(self._mean).div_(self._std)
        return x.to(dtype=self.dtype, memory_format=self.layout)

    def _target(self, height: int, width: int) -> tuple[int, int]:
        return self.spec.resize_target(height, width)

    def _draft(self, image: EncodedImage):
        return draft_size(image, self._target(image.height, image.width)) if self.jpeg_draft else None

    def _fill_with_pil(self, batch: BatchInput, buffer: np.ndarray, position: dict, errors: dict) -> None:
        from PIL import Image

        jobs = [(e.row, e.height, e.width, lambda e=e: decode_pil(e, max_pixels=self.max_pixels, draft=self._draft(e)))
                for e in batch.encoded]
        for group in (g for g in batch.groups if g.kind == "uint8"):
            h, w = group.array.shape[1:3]
            jobs += [(row, h, w, lambda a=group.array[i]: Image.fromarray(a)) for i, row in enumerate(group.rows)]

        def work(job) -> None:
            row, height, width, source = job
            try:
                self._pil_into(source(), height, width, buffer[position[row]])
            except ServiceError as exc:
                errors[row] = exc

        if len(jobs) == 1:
            work(jobs[0])
        else:
            list(self.pool.map(work, jobs))

    def _pil_into(self, img, height: int, width: int, out: np.ndarray) -> None:
        """Resize (from whatever size was decoded to the target of the full
        `height` x `width`), crop and write one upright RGB image into `out`.
        PIL's resize is exact but about four times slower than torchvision's
        vectorised one; an image decoded at reduced size is no longer exact,
        so it takes the fast one."""
        import torch

        rh, rw = self._target(height, width)
        if (img.height, img.width) != (rh, rw):
            if self.resample is not None and (img.height, img.width) == (height, width):
                img = img.resize((rw, rh), self.resample)
            else:
                tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1)
                out[...] = self._resize_crop(tensor[None], (rh, rw))[0].permute(1, 2, 0).numpy()
                return
        array = np.asarray(img)
        top, left = _crop_offset(rh, self.spec.height), _crop_offset(rw, self.spec.width)
        if top >= 0 and left >= 0:
            out[...] = array[top : top + self.spec.height, left : left + self.spec.width]
        else:  # a crop larger than the image pads, as CenterCrop does
            tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
            out[...] = self._resize_crop(tensor[None], (rh, rw))[0].permute(1, 2, 0).numpy()

    def _resize_crop(self, images, target: tuple[int, int]):
        """uint8 [n, 3, h, w] (one size) resized to `target` and centre-cropped, with torchvision."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if tuple(images.shape[-2:]) != target:
            images = F.resize(images, list(target), interpolation=InterpolationMode(self.spec.interpolation),
                              antialias=self.spec.antialias)
        if self.spec.fixed_size:
            images = F.center_crop(images, [self.spec.height, self.spec.width])
        return images

    def _fill_on_device(self, batch: BatchInput, pixels, position: dict, errors: dict) -> None:
        """Decode and resize on the device; `pixels` is [n, 3, H, W]."""
        import torch

        upright = [(rows, images, self._target(e.height, e.width))
                   for (rows, images), e in self._decode_on_device(batch.encoded, errors)]
        for group in (g for g in batch.groups if g.kind == "uint8"):
            images = torch.from_numpy(group.array).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            upright.append((group.rows, images, self._target(*images.shape[-2:])))
        # Images of one size (a camera's frames, a client's arrays) resize as one tensor.
        by_size: dict[tuple, list] = {}
        for rows, images, target in upright:
            by_size.setdefault((tuple(images.shape[-2:]), target), []).append((rows, images))
        for (_, target), members in by_size.items():
            rows = [r for member_rows, _ in members for r in member_rows]
            images = members[0][1] if len(members) == 1 else torch.cat([m for _, m in members])
            index = torch.tensor([position[r] for r in rows], device=self.device)
            pixels.index_copy_(0, index, self._resize_crop(images, target))

    def _decode_on_device(self, encoded: list[EncodedImage], errors: dict) -> list:
        """(([row], uint8 [1, 3, h, w] on the device), its EncodedImage) for
        each encoded image that decodes; `h` x `w` is the decoded size (reduced
        with jpeg_draft)."""
        import torch

        plan = route(encoded, batch_jpeg=True, draft=self._draft if self.jpeg_draft else None)
        decoded = self.jpeg(plan.batch_jpeg)
        refused = [e for e, t in zip(plan.batch_jpeg, decoded) if t is None]
        out = [(([e.row], t[None]), e) for e, t in zip(plan.batch_jpeg, decoded) if t is not None]

        def on_cpu(image: EncodedImage):
            try:
                img = decode_pil(image, max_pixels=self.max_pixels, draft=self._draft(image))
            except ServiceError as exc:
                errors[image.row] = exc
                return None
            return torch.from_numpy(np.array(img)).permute(2, 0, 1)

        cpu_images = [*plan.pil, *refused]
        for image, tensor in zip(cpu_images, self.pool.map(on_cpu, cpu_images)):
            if tensor is not None:
                out.append((([image.row], tensor.to(self.device, non_blocking=True)[None]), image))
        return out

    # ------------------------------------------------------------- listed

    def _listed(self, batch: BatchInput) -> Prepared:
        """Each image at its own size (detection): decoded, then prepared one by one."""
        import torch

        errors: dict[int, ServiceError] = {}
        pixels: dict[int, Any] = {}  # row -> uint8 [3, h, w]
        if self.jpeg is not None:
            for (rows, tensor), _ in self._decode_on_device(batch.encoded, errors):
                pixels[rows[0]] = tensor[0]
        else:
            def decode(image: EncodedImage):
                try:
                    return torch.from_numpy(np.array(decode_pil(image, max_pixels=self.max_pixels))).permute(2, 0, 1)
                except ServiceError as exc:
                    errors[image.row] = exc
                    return None

            for image, tensor in zip(batch.encoded, self.pool.map(decode, batch.encoded)):
                if tensor is not None:
                    pixels[image.row] = tensor
        ready: dict[int, Any] = {}
        for group in batch.groups:
            for i, row in enumerate(group.rows):
                if group.kind == "uint8":
                    pixels[row] = torch.from_numpy(group.array[i]).permute(2, 0, 1)
                else:
                    ready[row] = torch.from_numpy(group.array[i])
        for row, tensor in pixels.items():
            ready[row], _ = prepare(tensor, self.spec, device=self.device)
        rows = sorted(ready)
        return Prepared([ready[r].to(self.device, non_blocking=True).to(self.dtype) for r in rows], rows, errors)
