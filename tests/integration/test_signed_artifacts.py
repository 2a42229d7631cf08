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


def add_model(tiny_repo, repo, name: str, key=None):
    """The tiny model as `<repo>/<name>/1`, signed with `key` when given."""
    artifact = artifacts.read(tiny_repo / "tiny" / "1" / "model.fwa")
    artifact.name = name
    path = artifacts.write(artifact, repo / name / "1" / "model.fwa")
    if key is not None:
        assert cli(["sign", str(path), "--key", str(key)]) == 0
    return path


def states(server) -> dict:
    with Client(server.address) as c:
        return {(m.name, v.version): (v.state, v.reason) for m in c.list_models().models for v in m.versions}


@pytest.fixture(scope="module")
def trusting(keys, tiny_repo, tmp_path_factory):
    """A server trusting one key, signatures not required: "unsigned", "changed"
    (altered after it was signed) and "intruder" (signed with another key)."""
    repo = tmp_path_factory.mktemp("trusting")
    add_model(tiny_repo, repo, "unsigned")
    changed = add_model(tiny_repo, repo, "changed", keys / "trusted" / "release.key")
    artifact = artifacts.read(changed)
    artifact.output.labels[0] = "something else"  # metadata only: the weights digest still matches
    artifacts.write(artifact, changed)
    add_model(tiny_repo, repo, "intruder", keys / "other" / "intruder.key")
    with RunningServer(repo=str(repo), trusted_keys=str(keys / "trusted")) as server:
        yield server


@pytest.fixture(scope="module")
def requiring(keys, tiny_repo, tmp_path_factory):
    """A server requiring signed artifacts (every version served): "tiny" 1
    signed, the same file replayed as "other" 7 and "tiny" 2, and "unsigned"."""
    repo = tmp_path_factory.mktemp("requiring")
    path = add_model(tiny_repo, repo, "tiny", keys / "trusted" / "release.key")
    for name, version in (("other", 7), ("tiny", 2)):
        (repo / name / str(version)).mkdir(parents=True)
        shutil.copy(path, repo / name / str(version) / "model.fwa")
    add_model(tiny_repo, repo, "unsigned")
    with RunningServer(repo=str(repo), trusted_keys=str(keys / "trusted"), require_signed=True,
                       version_policy="all") as server:
        yield server, path


def test_keygen_writes_a_private_key_only_the_owner_can_read(keys):
    private = keys / "trusted" / "release.key"
    assert private.stat().st_mode & 0o777 == 0o600
    assert (keys / "trusted" / "release.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_a_signed_artifact_is_served(requiring, capsys):
    server, path = requiring
    assert cli(["inspect", str(path)]) == 0
    assert re.search(r"signed +yes, key [0-9a-f]{16}", capsys.readouterr().out)
    with Client(server.address) as c:
        answer = c.predict(encode(random_image(1)), model="tiny")
    assert answer.classes and answer.version == 1


def test_an_artifact_changed_after_signing_is_refused(trusting):
    state, reason = states(trusting)[("changed", 1)]
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


def test_a_key_that_is_not_trusted_is_refused(trusting):
    state, reason = states(trusting)[("intruder", 1)]
    assert state == pb.MODEL_STATE_UNAVAILABLE and "not among the trusted keys" in reason
    with Client(trusting.address, retries=0) as c, pytest.raises(FramewireError) as info:
        c.predict(encode(random_image(1)), model="intruder")
    assert info.value.code.name == "UNAVAILABLE"


def test_unsigned_artifacts_are_refused_only_when_signatures_are_required(requiring, trusting):
    state, reason = states(requiring[0])[("unsigned", 1)]
    assert state == pb.MODEL_STATE_UNAVAILABLE and "requires signed artifacts (--require-signed)" in reason
    assert states(trusting)[("unsigned", 1)][0] == pb.MODEL_STATE_READY


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


def test_a_signed_artifact_is_served_only_as_the_model_and_version_it_was_signed_as(requiring):
    """Replayed under another name, or under a newer version of its own model: refused."""
    server, _ = requiring
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
