"""Errors raised while reading, checking or writing framewire artifacts.

Every problem has its own subclass of :class:`ArtifactError`; each message
names the file and says what to do about it. The server turns these into a
model state of UNAVAILABLE with the message as its reason.
"""

from __future__ import annotations

from pathlib import Path


class ArtifactError(Exception):
    """Base class: an artifact (or an export input) cannot be used."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ArtifactTooLargeError(ArtifactError):
    """The file is larger than the configured limit; nothing was read."""


class ArtifactCorruptError(ArtifactError):
    """The file is not a complete, well-formed framewire artifact."""


class ArtifactVersionError(ArtifactError):
    """The artifact's format (or graph schema) is newer than this reader."""


class ArtifactDigestError(ArtifactError):
    """A recorded sha256 does not match the bytes it covers."""


class SafetensorsHeaderError(ArtifactError):
    """The safetensors blob's header is malformed or inconsistent."""


class UnknownArchitectureError(ArtifactError):
    """The architecture names a builder that is not on this server's allowlist."""


class ArchitectureArgumentError(ArtifactError):
    """A builder keyword argument is not allowed (not a scalar, or forbidden)."""


class GraphProgramError(ArtifactError):
    """A torch.export graph calls something outside aten/prims or is malformed."""


class ArtifactLoadTimeoutError(ArtifactError):
    """Checking and rebuilding the network overran its time budget and was stopped."""


class ArtifactIdentityError(ArtifactError):
    """The artifact's recorded (signed) name and version are not its path's."""


class ArtifactSignatureError(ArtifactError):
    """A signature does not verify, its key is not trusted, or one is required."""


class WeightsMismatchError(ArtifactError):
    """The weights do not fit the architecture (names, shapes or dtypes)."""


class InvalidArtifactFieldError(ArtifactError):
    """A metadata field (name, task, input spec, preprocessing) is invalid."""


class CheckpointError(ArtifactError):
    """A weights file given to the exporter could not be read."""


class UnsafeCheckpointError(CheckpointError):
    """A legacy checkpoint would need full unpickling (it references code)."""


class VerificationError(ArtifactError):
    """The reloaded artifact does not reproduce the source model's outputs."""
