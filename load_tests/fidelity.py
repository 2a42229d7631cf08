"""How much reduced-size JPEG decoding changes answers, and how close the
exact path is to the canonical torchvision pipeline.

    python -m load_tests.fidelity [--artifact model.fwa] [--device cpu] [--dtype float32] [--out report.json]

Runs the demo model (pretrained EfficientNet-Lite0; or --artifact) through
the server's own batch preprocessing (`service.pixels`) on the bundled
scikit-image photos and on generated camera frames (640x480, 1280x720,
1920x1080), and compares three pipelines per image: the canonical
torchvision one on a PIL image (Resize, CenterCrop, ToTensor, Normalize),
framewire's exact path, and framewire with reduced-size decoding
(`--jpeg-draft`). Reports top-1 agreement and the largest difference in the
top-1 class's probability, per image set.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: The colour and grey photos scikit-image ships (no download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "camera", "coins", "moon", "page", "text", "clock", "grass", "gravel", "brick")
FRAME_SIZES = ((640, 480), (1280, 720), (1920, 1080))


def photo_jpegs(quality: int = 95) -> dict[str, bytes]:
    import skimage.data
    from PIL import Image

    out = {}
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        buf = io.BytesIO()
        Image.fromarray(array[..., :3]).save(buf, format="JPEG", quality=quality)
        out[name] = buf.getvalue()
    return out


def frame_jpegs(count: int = 4) -> dict[str, bytes]:
    from PIL import Image

    from .inputs import photo_like

    out = {}
    for width, height in FRAME_SIZES:
        for seed in range(count):
            buf = io.BytesIO()
            Image.fromarray(photo_like(width, height, seed)).save(buf, format="JPEG", quality=90)
            out[f"frame {width}x{height} #{seed}"] = buf.getvalue()
    return out


def probabilities(artifact: str, images: dict[str, bytes], *, device: str = "cpu", dtype: str = "float32") -> dict:
    """{pipeline: [N, K] probabilities} for "canonical", "exact" and "draft",
    and "reduced": which images reduced-size decoding applies to."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from framewire.exporter import load_model
    from framewire.service.decode import EncodedImage, draft_size
    from framewire.service.payloads import Payload, gather
    from framewire.service.pixels import BatchPreprocessor
    from framewire.service.preprocess import PreprocessSpec, read_header

    loaded = load_model(artifact)
    spec = PreprocessSpec.from_artifact(loaded.artifact)
    torch_dtype = getattr(torch, dtype)
    module = loaded.module.to(device=device, dtype=torch_dtype)
    canonical = T.Compose([T.Resize(spec.resize_shorter), T.CenterCrop((spec.height, spec.width)), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    pool = ThreadPoolExecutor(4)
    payloads = []
    for data in images.values():
        header = read_header(data, max_pixels=10**9, max_bytes=10**9)
        payloads.append(Payload("encoded", data, header.height, header.width, header.format, header.orientation))
    inputs = {"canonical": torch.stack([canonical(Image.open(io.BytesIO(d)).convert("RGB")) for d in images.values()])
              .to(device=device, dtype=torch_dtype)}
    for name, draft in (("exact", False), ("draft", True)):
        preprocessor = BatchPreprocessor(spec, stacked=True, device=device, dtype=torch_dtype, channels_last=False,
                                         pool=pool, decoder="pil", jpeg_draft=draft)
        prepared = preprocessor.prepare(gather(payloads))
        assert not prepared.errors and prepared.rows == sorted(prepared.rows)
        inputs[name] = prepared.inputs
    out = {"reduced": [draft_size(EncodedImage(0, p.data, p.format, p.height, p.width, p.orientation),
                                  spec.resize_target(p.height, p.width)) is not None for p in payloads]}
    with torch.inference_mode():
        for name, x in inputs.items():
            out[name] = torch.cat([torch.softmax(module(x[i : i + 8]).float(), 1) for i in range(0, len(x), 8)])
    return out


def compare(reference, other) -> dict:
    """Top-1 agreement and the largest change of the reference's top-1 probability."""
    top = reference.argmax(1)
    rows = np.arange(len(top))
    diff = (reference[rows, top] - other[rows, top]).abs()
    return {"images": len(top), "top1_agreement": float((other.argmax(1) == top).float().mean()),
            "max_top1_probability_difference": float(diff.max()), "mean_top1_probability_difference": float(diff.mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", help="a classification artifact (default: export the demo model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    artifact = args.artifact
    if artifact is None:
        from framewire.exporter.demo import export_demo

        artifact = str(export_demo(Path(tempfile.mkdtemp(prefix="fw-fidelity-"))).path)
    report = {}
    for set_name, images in (("bundled photos", photo_jpegs()), ("generated frames", frame_jpegs())):
        probs = probabilities(artifact, images, device=args.device, dtype=args.dtype)
        reduced = np.flatnonzero(probs["reduced"])
        report[set_name] = {"exact vs canonical": compare(probs["canonical"], probs["exact"]),
                            "draft vs exact": compare(probs["exact"], probs["draft"]),
                            "draft vs exact, reduced images only": compare(probs["exact"][reduced],
                                                                           probs["draft"][reduced])}
    for set_name, rows in report.items():
        for label, r in rows.items():
            print(f"{set_name:17} {label:36} {r['images']:3} images: top-1 agreement {r['top1_agreement']:.3f}, "
                  f"top-1 probability difference max {r['max_top1_probability_difference']:.2e}, "
                  f"mean {r['mean_top1_probability_difference']:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
