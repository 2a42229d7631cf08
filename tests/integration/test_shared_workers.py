"""Worker processes per device, shared by every model version placed there
(service/device_workers.py): several models in one process, a failing
forward pass fails its own model's requests only, a killed worker comes back
once for every model it hosted, a version coming or going leaves the others
serving."""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from framewire.client import Client, FramewireError
from framewire.oip import grpc_service_pb2 as oip
from framewire.oip import grpc_service_pb2_grpc
from framewire.v1 import inference_pb2 as pb
from support.artifacts import export_tiny
from support.images import encode, random_image
from support.plugins import (bright_refusing_artifact, hanging_artifact, install_bright_refusing_architecture,
                             install_hanging_architecture)
from support.server import RunningServer
from support.processes import gone, kill_and_wait as kill
from support.waiting import wait_until

WHITE = encode(np.full((48, 64, 3), 255, np.uint8))


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("plugins")
    install_hanging_architecture(directory)
    return install_bright_refusing_architecture(directory)


@pytest.fixture
def plugin_env(monkeypatch, plugin_dir) -> None:
    """Worker processes started from now on find the test architectures."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH", ""))
                                                     if p))


@pytest.fixture(scope="module")
def three_repo(tmp_path_factory, tiny_repo, plugin_dir) -> Path:
    """tiny, other (tiny's network with other weights) and bright (refuses white images)."""
    repo = tmp_path_factory.mktemp("three-repo")
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    export_tiny(repo, "other", 1, seed=7)
    bright_refusing_artifact(tiny_repo / "tiny" / "1" / "model.fwa", repo, plugin_dir)
    return repo


def status(client) -> dict:
    return json.loads(client.server_status().status_json)


def worker_pids(server, model: str) -> list[int]:
    """Pids of a model's instances, by instance."""
    (served,) = [m for m in server.server.repo.served() if m.name == model]
    return [w.pid for w in served.workers()]






def answer_or_unavailable(client, image, model):
    try:
        return client.predict(image, model=model, return_raw=True)
    except FramewireError as exc:
        assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
        return None


def test_models_share_the_worker_processes_and_a_failing_forward_fails_only_its_own_requests(three_repo, plugin_env):
    with RunningServer(repo=str(three_repo), instances_per_device=2) as server, \
            Client(server.address, retries=0, timeout=60) as c:
        pids = {name: worker_pids(server, name) for name in ("tiny", "other", "bright")}
        assert len(set(pids["tiny"])) == 2, "two worker processes, one instance of each model in each"
        assert pids["tiny"] == pids["other"] == pids["bright"]
        assert server.server.workers.pids() == set(pids["tiny"])

        def shared_in_status():  # what `framewire status` and `top` show, sampled each second
            document = status(c)
            listed = {m["model"]: sorted(w["pid"] for w in m["workers"]) for m in document["models"]}
            workers = [p for p in document["processes"] if p["role"] == "worker"]
            return document if listed == {n: sorted(p) for n, p in pids.items()} and len(workers) == 2 else None

        document = wait_until(shared_in_status, timeout=30, what="the shared workers in the status document")
        for process in (p for p in document["processes"] if p["role"] == "worker"):
            assert sorted(process["models"]) == ["bright:1", "other:1", "tiny:1"]

        image = encode(random_image(5))
        before = c.predict(image, model="tiny", return_raw=True).raw["logits"]
        assert c.predict(image, model="bright").version == 1  # it answers what it does not refuse
        # bright's failing batches run on the same processes while tiny and other are busy there.
        with ThreadPoolExecutor(8) as pool:
            refused = [pool.submit(c.predict, WHITE, model="bright") for _ in range(4)]
            others = [pool.submit(c.predict, image, model=name, return_raw=True)
                      for _ in range(6) for name in ("tiny", "other")]
            for future in refused:
                with pytest.raises(FramewireError) as info:
                    future.result()
                assert info.value.code == grpc.StatusCode.INTERNAL
                assert "this model refuses bright images" in info.value.message
            for future in others:
                assert future.result().version == 1
        np.testing.assert_allclose(c.predict(image, model="tiny", return_raw=True).raw["logits"], before, atol=1e-6)
        assert c.predict(image, model="bright").version == 1
        assert {name: worker_pids(server, name) for name in pids} == pids, "no worker process died"


def test_a_killed_shared_worker_comes_back_once_for_every_model_it_hosted(three_repo):
    """Two workers hosting tiny and other: one killed, both models are answered by
    the other at once; the killed one is started again once, with both models in it."""
    repo = three_repo
    with RunningServer(repo=str(repo), models=["tiny", "other"], instances_per_device=2) as server, \
            Client(server.address, retries=0, timeout=60) as c:
        image = encode(random_image(6))
        before = {name: c.predict(image, model=name, return_raw=True).raw["logits"] for name in ("tiny", "other")}
        victim, survivor = worker_pids(server, "tiny")
        kill(victim)
        for _ in range(3):  # the batches the victim would have run too
            for name in ("tiny", "other"):
                assert c.predict(image, model=name).version == 1

        def back():
            workers = {m["model"]: m["workers"] for m in status(c)["models"]}
            states = [(w["state"], w["restarts"]) for name in ("tiny", "other") for w in workers[name]]
            return workers if sorted(states) == [("running", 0), ("running", 0), ("running", 1), ("running", 1)] \
                else None

        workers = wait_until(back, timeout=120, what="the killed worker running again for both models")
        replacement = {w["pid"] for name in ("tiny", "other") for w in workers[name] if w["restarts"] == 1}
        assert len(replacement) == 1 and victim not in replacement, "one process, started once, hosts both again"
        assert {w["pid"] for w in workers["tiny"]} == {w["pid"] for w in workers["other"]} == replacement | {survivor}
        kill(survivor)  # now only the replacement serves: both models answer as before
        for name in ("tiny", "other"):
            after = wait_until(lambda: answer_or_unavailable(c, image, name), timeout=60, what=f"{name} answered")
            np.testing.assert_allclose(after.raw["logits"], before[name], atol=1e-6)


def test_a_new_version_a_reload_and_an_unload_leave_the_other_models_serving(tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    export_tiny(repo, "other", 1, seed=7)
    image = encode(random_image(7))
    with RunningServer(repo=str(repo)) as server, Client(server.address, retries=0, timeout=60) as c:
        (pid,) = worker_pids(server, "other")
        expected = c.predict(image, model="other", return_raw=True).raw["logits"]
        stop, failures, answered = threading.Event(), [], [0]

        def keep_asking():  # other's requests all along
            with Client(server.address, retries=0, timeout=60) as mine:
                while not stop.is_set():
                    try:
                        got = mine.predict(image, model="other", return_raw=True).raw["logits"]
                        np.testing.assert_allclose(got, expected, atol=1e-6)
                        answered[0] += 1
                    except Exception as exc:  # noqa: BLE001 - every failure is a finding
                        failures.append(exc)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            export_tiny(repo, "tiny", 2, seed=3)  # a new version: loaded beside v1 in the same process
            server.poll()
            (model,) = [m for m in c.list_models().models if m.name == "tiny"]
            assert [(v.version, v.state) for v in model.versions][0] == (2, pb.MODEL_STATE_READY)
            wait_until(lambda: [m.version for m in server.server.repo.served() if m.name == "tiny"] == [2],
                       timeout=60, what="tiny v1 to be retired")
            assert c.predict(image, model="tiny").version == 2
            assert worker_pids(server, "tiny") == worker_pids(server, "other") == [pid]

            export_tiny(repo, "tiny", 2, seed=4, overwrite=True)  # the same version, a changed file: reloaded
            server.poll()
            wait_until(lambda: len([m for m in server.server.repo.served() if m.name == "tiny"]) == 1, timeout=60,
                       what="the old copy of tiny v2 to be unloaded")
            assert c.predict(image, model="tiny").version == 2

            with grpc.insecure_channel(server.address) as channel:
                grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                    oip.RepositoryModelUnloadRequest(model_name="tiny"), timeout=120)
            with pytest.raises(FramewireError):
                c.predict(image, model="tiny")
            wait_until(lambda: answered[0] >= 5, timeout=60, what="other to keep answering")
        finally:
            stop.set()
            asker.join(60)
        assert not failures, failures[:3]
        assert worker_pids(server, "other") == [pid] and server.server.workers.pids() == {pid}

        with grpc.insecure_channel(server.address) as channel:  # the last model leaves: its process stops
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                oip.RepositoryModelUnloadRequest(model_name="other"), timeout=120)
        wait_until(lambda: gone(pid), timeout=30, what="the worker hosting nothing to stop")
        assert server.server.workers.pids() == set()


def test_a_load_overrunning_its_budget_in_a_shared_worker_fails_alone(tiny_repo, tmp_path, plugin_env):
    """The overrunning load is killed with the process it runs in; the
    version already serving there is reloaded into a new process and serves
    again, and the new version alone is UNAVAILABLE."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny", repo / "tiny")
    image = encode(random_image(8))
    with RunningServer(repo=str(repo), model_overrides={"hang": {"load_timeout_seconds": 3.0}}) as server, \
            Client(server.address, retries=0, timeout=60) as c:
        (pid,) = worker_pids(server, "tiny")
        before = c.predict(image, model="tiny", return_raw=True).raw["logits"]
        hanging_artifact(tiny_repo / "tiny" / "1" / "model.fwa", repo)
        server.poll()
        (hang,) = [m for m in c.list_models().models if m.name == "hang"]
        assert hang.versions[0].state == pb.MODEL_STATE_UNAVAILABLE
        assert "longer than its 3-second budget (--load-timeout-seconds)" in hang.versions[0].reason
        assert gone(pid)
        (worker,) = server.server.workers.all()
        assert worker.restarts == 1 and worker.alive() and worker_pids(server, "tiny") == [worker.pid]
        after = wait_until(lambda: answer_or_unavailable(c, image, "tiny"), timeout=60, what="tiny answered")
        np.testing.assert_allclose(after.raw["logits"], before, atol=1e-6)
