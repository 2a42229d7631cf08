"""Every artifact load has a time budget, enforced from outside the loading thread.

The hanging load is a registry architecture whose builder never returns (an
operator-installed entry point, see support/plugins.py): it stands for any
load the checks do not catch, such as the graph whose symbolic sizes never
finish evaluating.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from framewire.client import Client
from framewire.v1 import inference_pb2 as pb
from support.images import encode, random_image
from support.plugins import hanging_artifact, install_hanging_architecture
from support.server import RunningServer, ServerProcess
from support.waiting import wait_until


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    return install_hanging_architecture(tmp_path_factory.mktemp("plugins"))


@pytest.fixture
def plugin_env(monkeypatch, plugin_dir) -> dict:
    """Processes started from now on (workers, checking children) find the hanging builder."""
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    return {"PYTHONPATH": path}


@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory, tiny_repo) -> Path:
    """tiny (loads in seconds) and hang (never finishes loading)."""
    repo = tmp_path_factory.mktemp("hostile-repo")
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    hanging_artifact(tiny_repo / "tiny" / "1" / "model.fwa", repo)
    return repo


def processes_loading(path: Path) -> list[int]:
    """Pids of processes whose command line names `path` (workers, checking children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(path).encode() in cmdline:
            found.append(int(entry.name))
    return found


def worker_processes(parent: int) -> set[int]:
    """Pids of the model worker processes `parent` started that still run (not zombies)."""
    found = set()
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():  # a child is listed under the thread that started it
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"framewire.service.worker" in cmdline and state != "Z":
            found.add(int(child))
    return found


def health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10).status


@pytest.mark.parametrize("runner", ["process", "thread"])
def test_a_load_that_overruns_its_budget_fails_alone(runner, hostile_repo, plugin_env):
    hang_file = hostile_repo / "hang" / "1" / "model.fwa"
    overrides = {"hang": {"load_timeout_seconds": 3.0}}
    others = worker_processes(os.getpid())  # workers of servers other tests in this process share
    with RunningServer(repo=str(hostile_repo), runner=runner, model_overrides=overrides) as server, \
            Client(server.address, retries=0, timeout=30) as client:
        models = {m.name: m.versions[0] for m in client.list_models().models}
        assert models["tiny"].state == pb.MODEL_STATE_READY
        assert models["hang"].state == pb.MODEL_STATE_UNAVAILABLE
        assert "longer than its 3-second budget (--load-timeout-seconds)" in models["hang"].reason
        assert client.predict(encode(random_image(1)), model="tiny").version == 1
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(server.address, "") == serving
        assert health(server.address, "framewire.model.tiny") == serving
        assert health(server.address, "framewire.model.hang") == not_serving
        wait_until(lambda: not processes_loading(hang_file), timeout=10, what="the overrunning load to be killed")
        if runner == "process":
            # The one worker process hosts tiny too (loaded before or after hang overran): no
            # process is left running the load. test_shared_workers has a load overrunning next
            # to a version already serving.
            (worker,) = server.server.workers.all()
            assert worker.alive()
            assert [w.pid for w in next(m for m in server.server.repo.served() if m.name == "tiny").workers()] == [
                worker.pid]
            wait_until(lambda: worker_processes(os.getpid()) - others == {worker.pid}, timeout=10,
                       what="the killed worker to be gone")


def test_sigterm_while_a_load_hangs_exits_at_once(hostile_repo, plugin_env, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text('[model.hang]\nload_timeout_seconds = 600\n')
    hang_file = hostile_repo / "hang" / "1" / "model.fwa"
    server = ServerProcess("--repo", str(hostile_repo), "--models", "hang", "--config", str(config),
                           env=plugin_env, wait_serving=False)
    try:
        # The worker logs the load it starts (its command line names no model: it hosts any).
        wait_until(lambda: f"loading hang:1#1 from {hang_file}" in server.output(), timeout=120,
                   what="the hanging load to start")
        workers = worker_processes(server.proc.pid)
        assert workers
        started = time.monotonic()
        assert server.terminate(timeout=60) == 0
        assert time.monotonic() - started < 30
        assert "loading was stopped: the server is stopping" in server.output()
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=10,
                   what="the load's process to be gone")
    finally:
        server.close()


def run_verify(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("framewire"), "verify", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_verify_stops_a_load_that_overruns_its_budget(hostile_repo, plugin_env):
    started = time.monotonic()
    result = run_verify(str(hostile_repo / "hang" / "1" / "model.fwa"), "--load-timeout-seconds", "3", env=plugin_env)
    assert result.returncode == 1
    assert "longer than its 3-second budget" in result.stderr
    assert time.monotonic() - started < 60


def test_verify_refuses_the_graph_whose_sizes_never_finish_evaluating(tiny_repo, tmp_path):
    from support import artifacts

    artifact = artifacts.read(tiny_repo / "tiny" / "1" / "model.fwa")
    symbol = "Symbol('s77', positive=True, integer=True)"
    program = artifact.graph.program_json.decode()
    assert symbol in program
    artifact.graph.program_json = program.replace(symbol, symbol + "+0*9**9**9**9").encode()
    path = artifacts.write(artifact, tmp_path / "tiny" / "1" / "model.fwa")
    result = run_verify(str(path))
    assert result.returncode == 1, result.stdout
    assert "raises a constant to a power" in result.stderr
