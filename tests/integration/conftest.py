"""Servers shared by the integration tests."""

from __future__ import annotations

import shutil

import pytest

from support.artifacts import export_tiny
from support.server import RunningServer


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("tiny-repo")
    export_tiny(repo, "tiny", 1)
    return repo


@pytest.fixture(scope="session")
def mixed_repo(tmp_path_factory, demo_repo, tiny_repo):
    """The demo model and the tiny model in one repository."""
    repo = tmp_path_factory.mktemp("mixed-repo")
    shutil.copytree(demo_repo / "efficientnet_lite0", repo / "efficientnet_lite0")
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    return repo


@pytest.fixture(scope="session")
def server(mixed_repo):
    """A server on both models with defaults close to production, shared by
    every test that only reads from it (it starts two model workers, one
    loading the demo network): a test that changes the server's state, or
    counts what it served, starts its own or counts what it adds."""
    with RunningServer(repo=str(mixed_repo), max_batch_size=8, max_queue_delay_us=5000,
                       max_images_per_request=16, max_message_bytes=4 * 1024 * 1024) as running:
        yield running


@pytest.fixture
def client(server):
    from framewire.client import Client

    with Client(server.address, timeout=60, retries=0) as c:
        yield c
