"""An artifact is served as the model and version it records, not as its path says."""

from __future__ import annotations

from pathlib import Path

import pytest

from framewire.exporter.errors import ArtifactIdentityError
from framewire.service.config import ConfigError, ServeConfig
from framewire.service.model import check_served_identity
from framewire.v1 import artifact_pb2 as pb


def artifact(name="tiny", version=1, signed=False) -> pb.ModelArtifact:
    a = pb.ModelArtifact(name=name, version=version)
    if signed:
        a.signature.signature = b"\1" * 64
    return a


def path(name: str, version: int) -> Path:
    return Path("/repo") / name / str(version) / "model.fwa"


def test_an_artifact_at_its_own_path_is_served():
    check_served_identity(artifact(), path("tiny", 1), ServeConfig())


@pytest.mark.parametrize("where", [("other", 1), ("tiny", 2)])
def test_an_artifact_at_another_models_or_versions_path_is_refused_with_what_to_do(where):
    with pytest.raises(ArtifactIdentityError) as info:
        check_served_identity(artifact(), path(*where), ServeConfig())
    assert (f"the artifact records model 'tiny' version 1, but its path says model {where[0]!r} version {where[1]}; "
            "put it at <repo>/tiny/1/") in info.value.reason
    assert "or pass --serve-path-identity to serve it as its path says" in info.value.reason


def test_the_operator_may_serve_it_as_its_path_says(caplog):
    check_served_identity(artifact(signed=True), path("other", 7), ServeConfig(serve_path_identity=True))
    assert "serving it as its path says (--serve-path-identity)" in caplog.text


def test_under_require_signed_the_signed_identity_is_the_only_one():
    with pytest.raises(ArtifactIdentityError, match="signed as model 'tiny' version 1, but its path says model "
                       "'other' version 7; with --require-signed"):
        check_served_identity(artifact(signed=True), path("other", 7), ServeConfig(require_signed=True))
    with pytest.raises(ConfigError, match="serve_path_identity=True: cannot go with --require-signed"):
        ServeConfig(require_signed=True, trusted_keys="/", serve_path_identity=True).validate()
