"""Assembling an artifact message and writing it atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from framewire import __version__
from framewire.v1 import artifact_pb2 as pb

from . import format as fmt
from .errors import InvalidArtifactFieldError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """How an image becomes the model's input (mirrors pb.Preprocessing)."""

    resize_mode: str = "shorter_side"
    resize_shorter: int = 256
    crop: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    antialias: bool = True
    scale: float = 1.0 / 255.0
    mean: Sequence[float] = field(default_factory=lambda: IMAGENET_MEAN)
    std: Sequence[float] = field(default_factory=lambda: IMAGENET_STD)

    def to_proto(self) -> pb.Preprocessing:
        modes = {v: k for k, v in fmt.RESIZE_MODE_NAMES.items()}
        if self.resize_mode not in modes:
            raise InvalidArtifactFieldError(
                f"resize mode {self.resize_mode!r} is not one of {sorted(modes)}"
            )
        if self.interpolation not in fmt.INTERPOLATIONS_BY_NAME:
            raise InvalidArtifactFieldError(
                f"interpolation {self.interpolation!r} is not one of "
                f"{sorted(fmt.INTERPOLATIONS_BY_NAME)}"
            )
        return pb.Preprocessing(
            resize_mode=modes[self.resize_mode],
            resize_shorter=self.resize_shorter if self.resize_mode == "shorter_side" else 0,
            crop_height=self.crop[0] if self.resize_mode != "none" else 0,
            crop_width=self.crop[1] if self.resize_mode != "none" else 0,
            interpolation=fmt.INTERPOLATIONS_BY_NAME[self.interpolation],
            antialias=self.antialias,
            scale=self.scale,
            mean=list(self.mean),
            std=list(self.std),
        )


def safetensors_blob(tensors: Mapping[str, object]) -> bytes:
    """Serialize tensors (each copied to its own contiguous CPU storage)."""
    from safetensors.torch import save

    own = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save(own, metadata={"format": "pt"})


def producer() -> pb.Producer:
    import torch

    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:
        tv = ""
    return pb.Producer(framewire_version=__version__, torch_version=torch.__version__, torchvision_version=tv)


def finish(artifact: pb.ModelArtifact, tensors: Mapping[str, object]) -> pb.ModelArtifact:
    """Fill the format version, producer, time, weights and digest."""
    artifact.format_version.major = fmt.FORMAT_MAJOR
    artifact.format_version.minor = fmt.FORMAT_MINOR
    artifact.producer.CopyFrom(producer())
    artifact.created_unix_seconds = int(time.time())
    blob = safetensors_blob(tensors)
    artifact.weights = blob
    artifact.weights_sha256 = hashlib.sha256(blob).digest()
    return artifact


def artifact_path(repo: str | Path, name: str, version: int) -> Path:
    """Where `name` version `version` lives in a model repository."""
    return Path(repo) / name / str(version) / fmt.ARTIFACT_FILENAME


def write_atomic(artifact: pb.ModelArtifact, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the artifact to `path` through a temporary file and a rename.

    A reader (the server's repository poller) never sees a half-written file:
    it either finds no file or the complete one.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; versions are immutable, export a new --version "
            "(or pass --overwrite)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    data = artifact.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
