"""Ed25519 signatures over an artifact's digests and identity.

The signed payload is a canonical JSON manifest of everything that decides
what the artifact computes and what it claims to be: format version, name,
version, task, architecture (registry builder and arguments, or the graph
program's sha256), input spec, preprocessing (floats by their exact bits),
outputs, the sha256 of the labels (each length-prefixed, so no two label
lists share it), the weights' sha256 and the parameter count. The weights and graph are covered through their digests, which the
loader checks against the bytes before it checks the signature. The
signature itself is stored in the artifact (`signature`), with the id of
the key that made it (sha256 of the raw public key, first 16 hex digits).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from framewire.v1 import artifact_pb2 as pb

from . import format as fmt
from .errors import ArtifactSignatureError

ALGORITHM = "ed25519"
PAYLOAD_PREFIX = b"framewire-artifact-signature-v2\n"
#: Format 1 hashed the labels joined by newlines, so ['a\nb', 'c'] and
#: ['a', 'b\nc'] shared a signature; it is recognised only to be refused.
LEGACY_PAYLOAD_PREFIX = b"framewire-artifact-signature-v1\n"


def _float_bits(values) -> list[str]:
    return [struct.pack("<f", v).hex() for v in values]


def labels_sha256(labels) -> str:
    """sha256 over the label count and each label's length and UTF-8 bytes."""
    digest = hashlib.sha256(struct.pack("<Q", len(labels)))
    for label in labels:
        raw = label.encode()
        digest.update(struct.pack("<Q", len(raw)))
        digest.update(raw)
    return digest.hexdigest()


def signed_payload(artifact: pb.ModelArtifact) -> bytes:
    """The bytes a signature covers (see the module doc)."""
    return PAYLOAD_PREFIX + _manifest(artifact, labels_sha256(artifact.output.labels))


def legacy_payload(artifact: pb.ModelArtifact) -> bytes:
    """The bytes a format-1 signature covered (labels joined by newlines)."""
    joined = hashlib.sha256("\n".join(artifact.output.labels).encode()).hexdigest()
    return LEGACY_PAYLOAD_PREFIX + _manifest(artifact, joined)


def _manifest(artifact: pb.ModelArtifact, labels_digest: str) -> bytes:
    kind = artifact.WhichOneof("architecture")
    if kind == "registry":
        architecture = {"registry": {
            "builder": artifact.registry.builder,
            "kwargs": {k: [v.WhichOneof("kind"), str(fmt.scalar_value(v))] for k, v in sorted(artifact.registry.kwargs.items())},
        }}
    else:
        g = artifact.graph
        architecture = {"graph": {
            "program_sha256": g.program_sha256.hex(),
            "schema": f"{g.schema_version.major}.{g.schema_version.minor}",
            "constants": sorted(g.constant_names),
        }}
    inp, pre = artifact.input, artifact.preprocessing
    manifest = {
        "format": [artifact.format_version.major, artifact.format_version.minor],
        "name": artifact.name,
        "version": artifact.version,
        "task": artifact.task,
        "architecture": architecture,
        "input": [inp.channels, inp.height, inp.width, inp.dtype, inp.layout, inp.color_order,
                  inp.min_batch, inp.max_batch],
        "preprocessing": [pre.resize_mode, pre.resize_shorter, pre.crop_height, pre.crop_width,
                          pre.interpolation, pre.antialias, _float_bits([pre.scale]),
                          _float_bits(pre.mean), _float_bits(pre.std)],
        "outputs": [[o.name, o.dtype, list(o.shape)] for o in artifact.output.outputs],
        "labels_sha256": labels_digest,
        "weights_sha256": artifact.weights_sha256.hex(),
        "parameter_count": artifact.parameter_count,
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_key) -> str:
    """Short id of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (private, PEM, mode 0600) and `<name>.pub` into `directory`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another --name or directory")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: str | Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ArtifactSignatureError(f"not an unencrypted PEM private key: {exc}", path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactSignatureError("the key is not an Ed25519 key (make one with `framewire keygen`)", path)
    return key


def sign(artifact: pb.ModelArtifact, private_key) -> None:
    """Fill the artifact's signature field."""
    artifact.signature.algorithm = ALGORITHM
    artifact.signature.key_id = key_id(private_key.public_key())
    artifact.signature.signature = private_key.sign(signed_payload(artifact))


@dataclass
class TrustPolicy:
    """Public keys the server trusts, by key id, and whether unsigned
    artifacts are refused."""

    keys: dict
    require_signed: bool = False

    @classmethod
    def from_directory(cls, directory: str | Path | None, require_signed: bool = False) -> "TrustPolicy":
        """Every `*.pub` (PEM Ed25519 public key) in `directory`."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        keys = {}
        if directory:
            for path in sorted(Path(directory).glob("*.pub")):
                try:
                    key = serialization.load_pem_public_key(path.read_bytes())
                except ValueError as exc:
                    raise ArtifactSignatureError(f"not a PEM public key: {exc}", path) from None
                if not isinstance(key, Ed25519PublicKey):
                    raise ArtifactSignatureError("not an Ed25519 public key", path)
                keys[key_id(key)] = key
        return cls(keys, require_signed)

    def check(self, artifact: pb.ModelArtifact, path: str | None = None) -> str | None:
        """The id of the trusted key that signed the artifact, None when it is
        unsigned and that is allowed; ArtifactSignatureError otherwise."""
        signature = artifact.signature
        if not signature.signature:
            if self.require_signed:
                raise ArtifactSignatureError(
                    "the artifact is unsigned and this server requires signed artifacts "
                    "(--require-signed); sign it with `framewire sign`", path)
            return None
        if not self.keys:
            return None
        if signature.algorithm != ALGORITHM:
            raise ArtifactSignatureError(f"signature algorithm {signature.algorithm!r} is not {ALGORITHM}", path)
        key = self.keys.get(signature.key_id)
        if key is None:
            raise ArtifactSignatureError(
                f"signed by key {signature.key_id}, which is not among the trusted keys "
                f"({', '.join(sorted(self.keys))}); add its .pub to --trusted-keys if you trust it", path)
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(signature.signature, signed_payload(artifact))
        except InvalidSignature:
            with contextlib.suppress(InvalidSignature):
                key.verify(signature.signature, legacy_payload(artifact))
                raise ArtifactSignatureError(
                    f"signed by key {signature.key_id} in an older signature format whose label encoding is "
                    "ambiguous; re-sign it with `framewire sign` (this framewire)", path) from None
            raise ArtifactSignatureError(
                f"the signature by key {signature.key_id} does not verify: the artifact was changed "
                "after it was signed; re-export and re-sign it", path) from None
        return signature.key_id
