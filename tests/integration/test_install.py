"""The client installs and runs without torch, from a built wheel, as the
README says; server-side verbs there say in one line which extra to add."""

from __future__ import annotations

import subprocess

import pytest

from support.images import encode, random_image
from support.server import RunningServer
from support.wheel import fresh_venv, requirements


@pytest.fixture(scope="module")
def client_venv(framewire_wheel, tmp_path_factory):
    """The wheel without the server extra, plus only its core dependencies."""
    venv = fresh_venv(tmp_path_factory.mktemp("client-venv") / "venv", framewire_wheel)
    core = requirements(framewire_wheel)
    assert {"grpcio", "protobuf", "numpy", "pillow"} <= set(core) and "torch" not in core
    venv.provide(*core)
    return venv


def run(venv, *args: str, cwd) -> subprocess.CompletedProcess:
    # Run from outside the repository, as a user of the installed package would.
    return subprocess.run([venv.bin("framewire"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_client_installs_without_torch_and_predicts(client_venv, tiny_repo, tmp_path):
    check = subprocess.run([str(client_venv.python), "-c",
                            "import importlib.util, framewire.client, framewire.stream, framewire.score\n"
                            "missing = [m for m in ('torch', 'torchvision', 'grpc_health', 'safetensors') "
                            "if importlib.util.find_spec(m)]\n"
                            "assert not missing, missing\n"
                            "print(framewire.client.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(str(client_venv.site))  # the installed copy, not the checkout
    assert run(client_venv, "--help", cwd=tmp_path).returncode == 0

    image = tmp_path / "frame.png"
    image.write_bytes(encode(random_image(4)))
    with RunningServer(repo=str(tiny_repo), runner="thread") as server:
        done = run(client_venv, "predict", "--server", server.address, "--model", "tiny", "--json", str(image),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"model": "tiny"' in done.stdout


@pytest.mark.parametrize("verb", [
    ["serve", "--repo", "models"],
    ["export", "torchvision/resnet18", "--repo", "models", "--random-init"],
    ["verify", "{artifact}"],
])
def test_server_verbs_name_the_extra_in_one_line(client_venv, tiny_repo, tmp_path, verb):
    artifact = str(tiny_repo / "tiny" / "1" / "model.fwa")
    done = run(client_venv, *(word.replace("{artifact}", artifact) for word in verb), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"framewire {verb[0]} needs the 'server' extra (module ")
    assert "pip install '.[server]' in a clone, or pip install 'framewire-0.1.0-py3-none-any.whl[server]'" in lines[0]
