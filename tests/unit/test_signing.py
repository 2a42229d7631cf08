"""What a signature covers, encoded so that no two artifacts share a payload."""

from __future__ import annotations

import pytest

from framewire.exporter.errors import ArtifactSignatureError
from framewire.exporter.signing import TrustPolicy, generate_key_pair, load_private_key, sign, signed_payload
from framewire.v1 import artifact_pb2 as pb


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    private, _ = generate_key_pair(directory, "release")
    return load_private_key(private), TrustPolicy.from_directory(directory, require_signed=True)


def artifact(labels) -> pb.ModelArtifact:
    a = pb.ModelArtifact(name="tiny", version=1, weights_sha256=b"\0" * 32)
    a.registry.builder = "torchvision/resnet18"
    a.output.labels.extend(labels)
    return a


def test_labels_cannot_be_re_split_under_the_same_signature(keys):
    key, trust = keys
    signed = artifact(["c0", "c1", "c2", "c3"])
    sign(signed, key)
    assert trust.check(signed) is not None
    resplit = artifact(["c0\nc1", "c2", "c3"])  # every class index shifts
    resplit.signature.CopyFrom(signed.signature)
    with pytest.raises(ArtifactSignatureError, match="does not verify"):
        trust.check(resplit)


@pytest.mark.parametrize("a, b", [
    (["c0\nc1", "c2"], ["c0", "c1\nc2"]),
    (["", "c0"], ["c0", ""]),
    (["c0"], ["c0", ""]),
    ([], [""]),
])
def test_different_label_lists_have_different_payloads(a, b):
    assert signed_payload(artifact(a)) != signed_payload(artifact(b))


def test_a_signature_in_the_old_ambiguous_format_is_refused_with_what_to_do(keys):
    from framewire.exporter import signing

    key, trust = keys
    old = artifact(["c0", "c1"])
    old.signature.algorithm, old.signature.key_id = signing.ALGORITHM, signing.key_id(key.public_key())
    old.signature.signature = key.sign(signing.legacy_payload(old))
    with pytest.raises(ArtifactSignatureError, match="older signature format.*re-sign it with `framewire sign`"):
        trust.check(old)
