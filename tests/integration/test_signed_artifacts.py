"""Signed artifacts: keygen, sign, and servers that trust some keys."""

from __future__ import annotations

import re
import shutil

import pytest

from framewire.cli import main as cli
from framewire.client import Client, FramewireError
from framewire.exporter import read_artifact
from framewire.exporter.errors import ArtifactSignatureError
from framewire.exporter.signing import TrustPolicy, load_private_key, sign
from framewire.v1 import inference_pb2 as pb
from support import artifacts
from support.images import encode, random_image
from support.server import RunningServer


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    assert cli(["keygen", "--out", str(root / "trusted"), "--name", "release"]) == 0
    assert cli(["keygen", "--out", str(root / "other"), "--name", "intruder"]) == 0
    return root


def signed_copy(tiny_repo, tmp_path, key) -> tuple:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    path = repo / "tiny" / "1" / "model.fwa"
    assert cli(["sign", str(path), "--key", str(key)]) == 0
    return repo, path


def states(server) -> dict:
    with Client(server.address) as c:
        return {(m.name, v.version): (v.state, v.reason) for m in c.list_models().models for v in m.versions}


def test_keygen_writes_a_private_key_only_the_owner_can_read(keys):
    private = keys / "trusted" / "release.key"
    assert private.stat().st_mode & 0o777 == 0o600
    assert (keys / "trusted" / "release.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_a_signed_artifact_is_served(keys, tiny_repo, tmp_path, capsys):
    repo, path = signed_copy(tiny_repo, tmp_path, keys / "trusted" / "release.key")
    assert cli(["inspect", str(path)]) == 0
    assert re.search(r"signed +yes, key [0-9a-f]{16}", capsys.readouterr().out)
    with RunningServer(repo=str(repo), trusted_keys=str(keys / "trusted"), require_signed=True) as server:
        with Client(server.address) as c:
            assert c.predict(encode(random_image(1)), model="tiny").classes


def test_an_artifact_changed_after_signing_is_refused(keys, tiny_repo, tmp_path):
    repo, path = signed_copy(tiny_repo, tmp_path, keys / "trusted" / "release.key")
    artifact = artifacts.read(path)
    artifact.output.labels[0] = "something else"  # metadata only: the weights digest still matches
    artifacts.write(artifact, path)
    with RunningServer(repo=str(repo), trusted_keys=str(keys / "trusted")) as server:
        state, reason = states(server)[("tiny", 1)]
        assert state == pb.MODEL_STATE_UNAVAILABLE
        assert "does not verify: the artifact was changed after it was signed" in reason


def test_tampered_weights_are_refused_even_with_a_fixed_digest(keys, tiny_repo, tmp_path):
    repo, path = signed_copy(tiny_repo, tmp_path, keys / "trusted" / "release.key")
    artifact = artifacts.read(path)
    from safetensors.torch import load, save

    tensors = dict(load(artifact.weights))
    tensors["head.bias"] = tensors["head.bias"] + 1.0
    artifact.weights = save(tensors)
    artifacts.write(artifact, path)  # recomputes weights_sha256, as an attacker would
    with pytest.raises(ArtifactSignatureError, match="does not verify"):
        read_artifact(path, trust=TrustPolicy.from_directory(keys / "trusted"))


def test_a_key_that_is_not_trusted_is_refused(keys, tiny_repo, tmp_path):
    repo, _ = signed_copy(tiny_repo, tmp_path, keys / "other" / "intruder.key")
    with RunningServer(repo=str(repo), trusted_keys=str(keys / "trusted")) as server:
        state, reason = states(server)[("tiny", 1)]
        assert state == pb.MODEL_STATE_UNAVAILABLE and "not among the trusted keys" in reason
        with Client(server.address, retries=0) as c, pytest.raises(FramewireError) as info:
            c.predict(encode(random_image(1)), model="tiny")
        assert info.value.code.name == "UNAVAILABLE"


def test_unsigned_artifacts_are_refused_only_when_signatures_are_required(keys, tiny_repo):
    with RunningServer(repo=str(tiny_repo), trusted_keys=str(keys / "trusted"), require_signed=True) as server:
        state, reason = states(server)[("tiny", 1)]
        assert state == pb.MODEL_STATE_UNAVAILABLE and "requires signed artifacts (--require-signed)" in reason
    with RunningServer(repo=str(tiny_repo), trusted_keys=str(keys / "trusted")) as server:
        assert states(server)[("tiny", 1)][0] == pb.MODEL_STATE_READY


def test_the_in_process_runner_checks_signatures_too(keys, tiny_repo, tmp_path):
    repo, _ = signed_copy(tiny_repo, tmp_path, keys / "other" / "intruder.key")
    with RunningServer(repo=str(repo), runner="thread", trusted_keys=str(keys / "trusted")) as server:
        assert states(server)[("tiny", 1)][0] == pb.MODEL_STATE_UNAVAILABLE


def test_require_signed_needs_trusted_keys(tiny_repo):
    from framewire.service.config import ConfigError, ServeConfig

    with pytest.raises(ConfigError, match="needs --trusted-keys"):
        ServeConfig(repo=str(tiny_repo), require_signed=True).validate()


def test_signing_covers_preprocessing_floats_to_the_bit(keys, tiny_repo, tmp_path):
    path = tmp_path / "model.fwa"
    shutil.copy(tiny_repo / "tiny" / "1" / "model.fwa", path)
    artifact = artifacts.read(path)
    sign(artifact, load_private_key(keys / "trusted" / "release.key"))
    artifact.preprocessing.mean[0] = artifact.preprocessing.mean[0] + 1e-6
    artifacts.write(artifact, path)
    with pytest.raises(ArtifactSignatureError):
        read_artifact(path, trust=TrustPolicy.from_directory(keys / "trusted"))


def test_a_signed_artifact_is_served_only_as_the_model_and_version_it_was_signed_as(keys, tiny_repo, tmp_path):
    """Replayed under another name, or under a newer version of its own model: refused."""
    repo, path = signed_copy(tiny_repo, tmp_path, keys / "trusted" / "release.key")
    for name, version in (("other", 7), ("tiny", 2)):
        (repo / name / str(version)).mkdir(parents=True)
        shutil.copy(path, repo / name / str(version) / "model.fwa")
    with RunningServer(repo=str(repo), trusted_keys=str(keys / "trusted"), require_signed=True,
                       version_policy="all") as server:
        found = states(server)
        assert found[("tiny", 1)][0] == pb.MODEL_STATE_READY
        for key in (("other", 7), ("tiny", 2)):
            state, reason = found[key]
            assert state == pb.MODEL_STATE_UNAVAILABLE
            assert (f"the artifact signed as model 'tiny' version 1, but its path says model {key[0]!r} version "
                    f"{key[1]}; with --require-signed an artifact is served only as the name and version it was "
                    "signed with") in reason
        with Client(server.address, retries=0) as c, pytest.raises(FramewireError) as info:
            c.predict(encode(random_image(1)), model="other")
        assert info.value.code.name == "UNAVAILABLE"
