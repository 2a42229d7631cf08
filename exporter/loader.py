"""The one place that reads framewire artifacts.

`read_artifact` parses and checks a file without torch: size limit before
reading, protobuf parse, format version, required fields, digests and the
safetensors header. `load_model` goes on to rebuild the network, from the
architecture allowlist or from a checked torch.export graph, and loads the
weights strictly. Every problem raises its own ArtifactError subclass naming
the file and what to do.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from framewire.v1 import artifact_pb2 as pb

from . import format as fmt
from .errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactDigestError,
    ArtifactTooLargeError,
    ArtifactVersionError,
    InvalidArtifactFieldError,
    WeightsMismatchError,
)
from .safetensors_check import TensorEntry, parse_header


@dataclass
class LoadedModel:
    """A rebuilt network and the artifact that describes it.

    `artifact` has its weights and program bytes cleared, so holding it costs
    no memory; `module` is in eval mode on the CPU in float32.
    """

    path: str
    artifact: pb.ModelArtifact
    module: Any
    file_bytes: int
    tensor_entries: dict[str, TensorEntry] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def version(self) -> int:
        return self.artifact.version

    @property
    def task(self) -> str:
        return fmt.TASK_NAMES[self.artifact.task]

    @property
    def labels(self) -> list[str]:
        return list(self.artifact.output.labels)


def read_artifact(path: str | Path, *, max_bytes: int = fmt.DEFAULT_MAX_ARTIFACT_BYTES, trust=None) -> pb.ModelArtifact:
    """Parse and check an artifact file; no torch needed, nothing built.

    `trust` (a signing.TrustPolicy) checks the signature after the digests.
    """
    return parse_artifact(read_artifact_bytes(path, max_bytes=max_bytes), str(path), trust=trust)


def read_artifact_bytes(path: str | Path, *, max_bytes: int = fmt.DEFAULT_MAX_ARTIFACT_BYTES) -> bytes:
    """An artifact file's bytes, the size limit checked before reading."""
    path = str(path)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ArtifactCorruptError(f"cannot read the artifact: {exc.strerror}", path) from None
    if size > max_bytes:
        raise ArtifactTooLargeError(
            f"file is {size} bytes, over the {max_bytes}-byte limit; raise the limit "
            "(--max-artifact-bytes) if the model really is this large",
            path,
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ArtifactCorruptError(f"cannot read the artifact: {exc.strerror}", path) from None
    if len(data) > max_bytes:
        raise ArtifactTooLargeError(f"file grew past the {max_bytes}-byte limit while being read", path)
    return data


def parse_artifact(data: bytes, path: str | None = None, *, trust=None) -> pb.ModelArtifact:
    """Parse and check artifact bytes (see read_artifact)."""
    artifact = pb.ModelArtifact()
    try:
        artifact.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ArtifactCorruptError(
            f"not a framewire artifact, or truncated ({exc}); re-export or re-copy the file",
            path,
        ) from None
    _check_format_version(artifact, path)
    _check_complete(artifact, path)
    _check_digests(artifact, path)
    if trust is not None:
        trust.check(artifact, path)
    parse_header(artifact.weights, path)
    _check_fields(artifact, path)
    return artifact


def load_model(
    path: str | Path,
    *,
    max_bytes: int = fmt.DEFAULT_MAX_ARTIFACT_BYTES,
    registry=None,
    trust=None,
    data: bytes | None = None,
) -> LoadedModel:
    """Read, check and rebuild an artifact's network on the CPU, in eval mode.

    `data` is the file's bytes when the caller has read them already (so
    what is checked is exactly what is built); `path` then only names it.
    """
    path = str(path)
    if data is None:
        data = read_artifact_bytes(path, max_bytes=max_bytes)
    artifact = parse_artifact(data, path, trust=trust)
    entries = parse_header(artifact.weights, path)
    module = build_module(artifact, path, registry=registry)
    artifact.ClearField("weights")
    if artifact.WhichOneof("architecture") == "graph":
        artifact.graph.ClearField("program_json")
    return LoadedModel(path, artifact, module, len(data), entries)


def build_module(artifact: pb.ModelArtifact, path: str | None = None, *, registry=None):
    """The network described by a checked artifact, weights loaded, eval mode."""
    from safetensors.torch import load as load_safetensors

    try:
        tensors = load_safetensors(bytes(artifact.weights))
    except Exception as exc:  # safetensors raises its own error type
        raise ArtifactCorruptError(f"weights blob could not be read: {exc}", path) from None

    kind = artifact.WhichOneof("architecture")
    if kind == "registry":
        module = _build_registry(artifact.registry, tensors, path, registry)
    else:
        from . import graph

        program = graph.check_program(artifact.graph.program_json, path)
        constant_names = set(artifact.graph.constant_names)
        state = {k: v for k, v in tensors.items() if k not in constant_names}
        constants = {k: v for k, v in tensors.items() if k in constant_names}
        ep = graph.rebuild_program(
            program, state, constants, path, exported_with=artifact.graph.torch_version or None
        )
        # An exported module runs in the mode it was traced in (eval, as the
        # exporter traces it) and refuses .eval() itself.
        module = ep.module()
    return module


def _build_registry(reg: pb.RegistryArchitecture, tensors: dict, path, registry):
    from .architectures import default_registry

    registry = registry or default_registry()
    kwargs = {}
    for key, value in reg.kwargs.items():
        kwargs[key] = fmt.scalar_value(value)
    # The shapes the arguments imply are compared with the stored tensors
    # before anything is allocated: an argument such as num_classes=250000
    # would otherwise cost its memory and time before the refusal.
    on_meta = _build_on_meta(registry, reg.builder, kwargs, path)
    if on_meta is not None:
        _check_weights(reg.builder, on_meta.state_dict(), tensors, path)
    module = registry.build(reg.builder, kwargs, path)
    _check_weights(reg.builder, module.state_dict(), tensors, path)
    module.load_state_dict(tensors, strict=True)
    return module.eval()


def _build_on_meta(registry, builder: str, kwargs: dict, path):
    """The architecture built on torch's meta device (shapes, no memory), or
    None for a builder that computes on tensors while building (torchvision's
    RegNets), which is then checked after its real build."""
    import torch

    try:
        with torch.device("meta"):
            return registry.build(builder, kwargs, path)
    except ArtifactError:
        raise
    except Exception:  # NotImplementedError and others from tensor code that needs real data
        return None


def _check_weights(builder: str, expected: dict, tensors: dict, path) -> None:
    """The stored tensors have exactly the names, shapes and dtypes the built architecture has."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsMismatchError(
            f"weights do not match {builder}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; check the builder's keyword arguments (e.g. num_classes)",
            path,
        )
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise WeightsMismatchError(
                f"tensor {name!r} is {tuple(got.shape)} {got.dtype}, {builder} expects "
                f"{tuple(want.shape)} {want.dtype}; check the builder's keyword arguments",
                path,
            )


def _check_format_version(artifact: pb.ModelArtifact, path) -> None:
    major = artifact.format_version.major
    minor = artifact.format_version.minor
    if major == 0:
        raise ArtifactCorruptError(
            "no format version: this is not a framewire artifact (or it is truncated)", path
        )
    if major > fmt.FORMAT_MAJOR:
        raise ArtifactVersionError(
            f"artifact format {major}.{minor} is newer than this framewire reads "
            f"({fmt.FORMAT_MAJOR}.x); upgrade framewire to serve it",
            path,
        )


def _check_complete(artifact: pb.ModelArtifact, path) -> None:
    if not artifact.weights_sha256:
        raise ArtifactCorruptError(
            "no weights digest: the file is truncated or incomplete; re-export or re-copy it", path
        )
    if not artifact.weights:
        raise ArtifactCorruptError("the artifact holds no weights; re-export it", path)
    if artifact.WhichOneof("architecture") is None:
        raise ArtifactCorruptError("the artifact names no architecture; re-export it", path)


def _check_digests(artifact: pb.ModelArtifact, path) -> None:
    digest = hashlib.sha256(artifact.weights).digest()
    if digest != artifact.weights_sha256:
        raise ArtifactDigestError(
            f"weights sha256 is {digest.hex()[:16]}..., the artifact records "
            f"{artifact.weights_sha256.hex()[:16]}...; the file is damaged, re-copy or re-export it",
            path,
        )
    if artifact.WhichOneof("architecture") == "graph":
        program = artifact.graph.program_json
        if hashlib.sha256(program).digest() != artifact.graph.program_sha256:
            raise ArtifactDigestError(
                "graph program sha256 does not match the recorded digest; the file is damaged, "
                "re-copy or re-export it",
                path,
            )


def _check_fields(artifact: pb.ModelArtifact, path) -> None:
    def bad(message: str) -> InvalidArtifactFieldError:
        return InvalidArtifactFieldError(f"{message}; re-export the model", path)

    if not fmt.MODEL_NAME_RE.match(artifact.name):
        raise bad(f"model name {artifact.name!r} is not valid ([A-Za-z0-9_.-], at most 128)")
    if artifact.version < 1:
        raise bad("model version must be a positive integer")
    if artifact.task not in fmt.TASK_NAMES:
        raise bad(f"unknown task {artifact.task}")
    inp, pre = artifact.input, artifact.preprocessing
    if inp.channels not in (1, 3) or inp.layout != pb.LAYOUT_NCHW:
        raise bad(f"input must be NCHW with 1 or 3 channels, got {inp.channels} channels")
    if inp.dtype not in fmt.DTYPE_NAMES or inp.color_order not in fmt.COLOR_ORDER_NAMES:
        raise bad("input dtype or colour order is not set")
    if inp.min_batch < 1 or inp.max_batch < inp.min_batch:
        raise bad(f"batch range [{inp.min_batch}, {inp.max_batch}] is not valid")
    if artifact.task != pb.TASK_DETECTION and (inp.height < 1 or inp.width < 1):
        raise bad("input height and width must be set for this task")
    if len(pre.mean) != inp.channels or len(pre.std) != inp.channels:
        raise bad(f"preprocessing needs {inp.channels} mean and std values")
    if any(s == 0 for s in pre.std) or pre.scale <= 0:
        raise bad("preprocessing std values and scale must be non-zero")
    if pre.resize_mode == pb.RESIZE_MODE_SHORTER_SIDE and pre.resize_shorter < 1:
        raise bad("shorter-side resize needs resize_shorter")
    if pre.resize_mode != pb.RESIZE_MODE_NONE and pre.interpolation not in fmt.INTERPOLATION_NAMES:
        raise bad("preprocessing resizes but names no interpolation")
    if pre.resize_mode != pb.RESIZE_MODE_NONE and (
        pre.crop_height != inp.height or pre.crop_width != inp.width
    ):
        raise bad(
            f"preprocessing produces {pre.crop_height}x{pre.crop_width} but the model takes "
            f"{inp.height}x{inp.width}"
        )
