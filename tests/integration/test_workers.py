"""Model worker processes: a crash is survived; the in-process runner gives the same answers."""

from __future__ import annotations

import os
import shutil
import signal
import time

import grpc
import numpy as np

from framewire.client import Client, FramewireError
from framewire.oip import grpc_service_pb2 as oip
from framewire.oip import grpc_service_pb2_grpc
from framewire.v1 import inference_pb2 as pb
from support import artifacts
from support.images import encode, random_image
from support.server import RunningServer
from support.waiting import wait_until


def worker_pids(server) -> list[int]:
    return [w.proc.pid for m in server.server.repo.served() for w in m.runner.instances]


def test_a_killed_worker_is_restarted_and_the_server_keeps_serving(tiny_repo):
    with RunningServer(repo=str(tiny_repo)) as server, Client(server.address, retries=3, backoff=0.2) as c:
        image = encode(random_image(1))
        before = c.predict(image, model="tiny", return_raw=True)
        (worker,) = [w for m in server.server.repo.served() for w in m.runner.instances]
        pid = worker.proc.pid
        os.kill(pid, signal.SIGKILL)
        worker.proc.wait(10)
        after = c.predict(image, model="tiny", return_raw=True)
        assert worker_pids(server) != [pid]
        np.testing.assert_allclose(after.raw["logits"], before.raw["logits"], atol=1e-6)
        assert c.server_status().serving


def test_the_in_process_runner_answers_like_the_worker(tiny_repo):
    images = [encode(random_image(i)) for i in range(5)]
    answers = {}
    for runner in ("process", "thread"):
        with RunningServer(repo=str(tiny_repo), runner=runner) as server, Client(server.address) as c:
            answers[runner] = [p.raw["logits"] for p in c.batch_predict(images, model="tiny", return_raw=True)]
            assert server.server.repo.served()[0].runner.__class__.__name__ == (
                "ProcessRunner" if runner == "process" else "ModelRunner")
    for a, b in zip(answers["process"], answers["thread"]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_workers_stop_with_the_server(tiny_repo):
    server = RunningServer(repo=str(tiny_repo), instances_per_device=2)
    pids = worker_pids(server)
    assert len(pids) == 2
    server.stop()
    for pid in pids:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"worker {pid} still running")


def with_other_weights(path) -> None:
    """Rewrite the artifact at `path` in place: same model and version, other weights."""
    from safetensors.torch import load, save

    artifact = artifacts.read(path)
    tensors = dict(load(artifact.weights))
    tensors["head.weight"] = tensors["head.weight"] * 2
    artifact.weights = save(tensors)
    artifacts.write(artifact, path)


def test_a_restarted_worker_serves_only_the_bytes_its_version_was_loaded_from(tiny_repo, tmp_path):
    """--poll-seconds 0, a served file overwritten, a worker killed: no request
    gets an answer from the new bytes while the version claims to be the old."""
    shutil.copytree(tiny_repo / "tiny", tmp_path / "tiny")
    path = tmp_path / "tiny" / "1" / "model.fwa"
    image = encode(random_image(3))
    with RunningServer(repo=str(tmp_path)) as server, \
            Client(server.address, retries=0, timeout=60) as c:
        loaded = c.predict(image, model="tiny", return_raw=True).raw["logits"]
        with_other_weights(path)
        os.kill(worker_pids(server)[0], signal.SIGKILL)

        def refused():
            try:
                answer = c.predict(image, model="tiny", return_raw=True).raw["logits"]
            except FramewireError as exc:  # the batch the worker died on is refused too
                assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                return exc if "changed on disk" in exc.message else None
            np.testing.assert_allclose(answer, loaded, atol=1e-6)  # never the new file's answer
            return None

        refusal = wait_until(refused, timeout=120, what="the version to be refused")
        assert "its file changed on disk after the version was loaded" in refusal.message
        (model,) = c.list_models().models
        assert [(v.version, v.state) for v in model.versions] == [(1, pb.MODEL_STATE_UNAVAILABLE)]
        assert "changed on disk" in model.versions[0].reason

        with grpc.insecure_channel(server.address) as channel:  # an explicit reload takes the new file
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
                oip.RepositoryModelLoadRequest(model_name="tiny"), timeout=120)
        reloaded = c.predict(image, model="tiny", return_raw=True).raw["logits"]
        assert not np.allclose(reloaded, loaded, atol=1e-3)
