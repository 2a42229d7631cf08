"""framewire installed as users install it: a wheel, not editable, in a
fresh environment. The client installs and runs without torch; server-side
verbs there say in one line which extra to add; with the server extra, the
whole export, serve and predict path runs from outside the repository; and
from a clone's root directory, `python -m framewire` runs the clone's code
whole even though a non-editable install sits beside it.

No network: the environments reuse the test environment's installed
distributions (linked, see support/wheel.py); only the wheel is installed."""

from __future__ import annotations

import json
import subprocess

import pytest

from support.images import encode, random_image
from support.server import RunningServer, ServerProcess
from support.wheel import ROOT, fresh_venv, requirements


@pytest.fixture(scope="module")
def client_venv(framewire_wheel, tmp_path_factory):
    """The wheel without the server extra, plus only its core dependencies."""
    core = requirements(framewire_wheel)
    assert {"grpcio", "protobuf", "numpy", "pillow"} <= set(core) and "torch" not in core
    return fresh_venv(tmp_path_factory.mktemp("client-venv") / "venv", framewire_wheel)


@pytest.fixture(scope="module")
def server_venv(framewire_wheel, tmp_path_factory):
    """The wheel with the server extra (pip checks every requirement is met)."""
    assert {"torch", "torchvision", "safetensors"} <= set(requirements(framewire_wheel, "server"))
    return fresh_venv(tmp_path_factory.mktemp("server-venv") / "venv", framewire_wheel, extra="server")


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


def test_with_the_server_extra_export_serve_and_predict_run_from_outside_the_repository(server_venv, tmp_path):
    where = subprocess.run([str(server_venv.python), "-c", "import framewire.exporter, framewire.service, "
                            "framewire.v1; print(framewire.exporter.__file__, framewire.service.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(server_venv.site)) for path in where.stdout.split())

    helped = run(server_venv, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and all(verb in helped.stdout for verb in ("export", "serve", "predict"))

    exported = run(server_venv, "export", "torchvision/mobilenet_v3_small", "--random-init", "--repo", "models",
                   cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "models" / "mobilenet_v3_small" / "1" / "model.fwa").is_file()

    image = tmp_path / "photo.png"
    image.write_bytes(encode(random_image(5, 96, 128)))
    serve = [server_venv.bin("framewire"), "serve", "--repo", "models", "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--device", "cpu", "--instances-per-device", "1"]  # one worker process: quicker
    server = ServerProcess(argv=serve, cwd=str(tmp_path))
    try:
        predicted = run(server_venv, "predict", "--server", server.address, "--model", "mobilenet_v3_small",
                        "--top-k", "3", "--json", "photo.png", cwd=tmp_path)
    finally:
        server.close()
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout)
    assert answer["model"] == "mobilenet_v3_small" and len(answer["classes"]) == 3


def test_from_a_clones_root_python_m_framewire_runs_the_clones_code_beside_an_installed_copy(server_venv,
                                                                                                 tiny_repo):
    # The clone's framewire/ comes first on sys.path here and shadows the installed
    # package; its service/, exporter/ and protos/ must still be found (framewire/checkout.py).
    where = subprocess.run([str(server_venv.python), "-c", "import framewire, framewire.exporter, framewire.v1; "
                            "print(framewire.__file__, framewire.exporter.__file__, framewire.v1.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(ROOT / "framewire" / "__init__.py"), str(ROOT / "exporter" / "__init__.py"),
                                    str(ROOT / "protos" / "framewire" / "v1" / "__init__.py")]
    inspected = subprocess.run([str(server_venv.python), "-m", "framewire", "inspect", "--json",
                                str(tiny_repo / "tiny" / "1" / "model.fwa")],
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["name"] == "tiny"
