"""The image's HEALTHCHECK script against a real server, a NOT_SERVING one and a closed port."""

from __future__ import annotations

import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from support.server import RunningServer

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "grpc_health_check.py"


def run_check(address: str, *args: str) -> subprocess.CompletedProcess:
    """The script as Docker runs it: a fresh interpreter, judged by its exit code."""
    return subprocess.run([sys.executable, str(SCRIPT), "--address", address, "--timeout", "5", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def framewire_server(tiny_repo):
    with RunningServer(repo=str(tiny_repo), runner="thread") as running:
        yield running


@pytest.fixture
def not_serving_server():
    """A bare gRPC health service that reports "" as NOT_SERVING, as framewire does while it loads."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_a_warm_framewire_server_is_healthy(framewire_server):
    result = run_check(framewire_server.address)
    assert result.returncode == 0, result.stderr
    assert run_check(framewire_server.address, "--service", "framewire.model.tiny").returncode == 0


def test_a_model_the_server_does_not_hold_is_unhealthy(framewire_server):
    result = run_check(framewire_server.address, "--service", "framewire.model.absent")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr


def test_a_server_that_is_not_serving_is_unhealthy(not_serving_server):
    result = run_check(not_serving_server)
    assert result.returncode == 1
    assert "NOT_SERVING" in result.stderr


def test_a_closed_port_is_unhealthy():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = run_check(address)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
