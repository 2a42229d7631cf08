"""A model that costs nothing, for measuring framewire's own cost per request.

`--model noop` in any `python -m load_tests` command serves it: a graph
artifact taking 224x224 images (resize and crop are both 224, so a 224x224
uint8 array goes through without resampling) whose network averages each
channel and maps the three means to ten classes. What is left of a
request's cost is gRPC, framewire's front end, the hand-off to the worker
and back: the front-end ceiling of issue "One port, several front-end
processes".
"""

from __future__ import annotations

from pathlib import Path

NAME = "noop"
SIZE = 224
CLASSES = 10


def build():
    import torch

    class Noop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, CLASSES)

        def forward(self, x):
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return Noop().eval()


def export_noop(repo: Path, *, version: int = 1) -> Path:
    """Export the no-cost model into `repo` as `noop`; the artifact's path."""
    from framewire.exporter.export import export_module
    from framewire.exporter.writer import Preprocess

    preprocess = Preprocess(resize_shorter=SIZE, crop=(SIZE, SIZE), mean=(0.5,) * 3, std=(0.25,) * 3)
    return export_module(build(), name=NAME, version=version, repo=repo, preprocess=preprocess,
                         labels=[f"class{i}" for i in range(CLASSES)], max_batch=256).path
