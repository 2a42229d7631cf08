"""`--frontends N`: the setting, `auto`, the arguments each front end gets, and the reserved port."""

from __future__ import annotations

import socket

import pytest

from framewire.service.config import ConfigError, ServeConfig, frontend_count
from framewire.service.device_workers import AttachedProcess, worker_socket
from framewire.service.frontends import reserve_port, serve_argv


def test_frontends_is_a_count_or_auto():
    assert frontend_count(ServeConfig(frontends="3").validate()) == 3
    for bad in ("0", "-1", "two", "65"):
        with pytest.raises(ConfigError, match="frontends"):
            ServeConfig(frontends=bad).validate()
    with pytest.raises(ConfigError, match="--runner process"):
        ServeConfig(frontends="2", runner="thread").validate()


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 8)])
def test_auto_gives_a_front_end_per_four_usable_cpus(cpus, expected):
    assert frontend_count(ServeConfig(frontends="auto").validate(), cpus=cpus) == expected
    assert frontend_count(ServeConfig(frontends="auto", runner="thread").validate(), cpus=cpus) == 1


def test_front_ends_get_the_arguments_given_to_serve():
    assert serve_argv(["/usr/bin/framewire", "serve", "--repo", "m", "--frontends", "2"]) == [
        "--repo", "m", "--frontends", "2"]


def test_the_reserved_port_lets_front_ends_bind_beside_it():
    reserved = reserve_port("127.0.0.1", 0)
    try:
        port = reserved.getsockname()[1]
        assert port > 0
        beside = socket.socket()
        beside.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        beside.bind(("127.0.0.1", port))  # what each front end's gRPC server does (grpc.so_reuseport)
        beside.close()
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # anyone else is refused
        plain.close()
        with pytest.raises(OSError, match="pick another --port"):
            other = socket.socket()
            other.bind(("127.0.0.1", 0))
            other.listen()
            try:
                reserve_port("127.0.0.1", other.getsockname()[1])
            finally:
                other.close()
    finally:
        reserved.close()


def test_worker_sockets_are_named_per_device_and_index(tmp_path):
    assert worker_socket(tmp_path, "cuda:1", 0) == tmp_path / "worker-cuda-1-0.sock"
    assert worker_socket(tmp_path, "cpu", 1).name == "worker-cpu-1.sock"


def test_an_attached_process_sees_another_process_exit():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    seen = AttachedProcess(child.pid)
    try:
        assert seen.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            seen.wait(0.1)
        seen.kill()
        child.wait(10)
        assert seen.wait(5) is None and seen.poll() == -1  # gone; its exit code is its parent's
    finally:
        seen.close()

