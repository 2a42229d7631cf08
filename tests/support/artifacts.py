"""Helpers for tests that build small models and tamper with artifacts."""

from __future__ import annotations

import hashlib
from pathlib import Path

from framewire.v1 import artifact_pb2 as pb


class TinyNet:
    """Factory for a small CNN with a non-persistent buffer and a constant."""

    @staticmethod
    def build(num_classes: int = 5, seed: int = 0):
        import torch

        torch.manual_seed(seed)

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
                self.bn = torch.nn.BatchNorm2d(8)
                self.head = torch.nn.Linear(8, num_classes)
                self.register_buffer("gain", torch.full((8,), 1.5), persistent=False)

            def forward(self, x):
                y = torch.relu(self.bn(self.conv(x))) * self.gain.view(1, -1, 1, 1)
                return self.head(y.mean(dim=(2, 3)))

        net = Net().eval()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.1, 0.1)
            net.bn.running_var.uniform_(0.5, 1.5)
        return net


def read(path: Path) -> pb.ModelArtifact:
    artifact = pb.ModelArtifact()
    artifact.ParseFromString(Path(path).read_bytes())
    return artifact


def write(artifact: pb.ModelArtifact, path: Path, *, redigest: bool = True) -> Path:
    """Write a (tampered) artifact, recomputing digests so deeper checks are reached."""
    if redigest:
        artifact.weights_sha256 = hashlib.sha256(artifact.weights).digest()
        if artifact.WhichOneof("architecture") == "graph":
            artifact.graph.program_sha256 = hashlib.sha256(artifact.graph.program_json).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(artifact.SerializeToString())
    return path


def export_tiny(repo: Path, name: str = "tiny", version: int = 1, *, seed: int = 0, size: int = 32,
                num_classes: int = 5, overwrite: bool = False) -> Path:
    """Export TinyNet (a graph artifact taking size x size images) into a repository."""
    from framewire.exporter.export import export_module
    from framewire.exporter.writer import Preprocess

    labels = [f"class{i}" for i in range(num_classes)]
    preprocess = Preprocess(resize_shorter=size + 4, crop=(size, size), mean=(0.5,) * 3, std=(0.25,) * 3)
    return export_module(
        TinyNet.build(num_classes=num_classes, seed=seed), name=name, version=version, repo=repo,
        preprocess=preprocess, labels=labels, max_batch=256, overwrite=overwrite,
    ).path
