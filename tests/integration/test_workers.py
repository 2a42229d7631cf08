"""Model worker processes: a crash is survived (the other instances serve meanwhile), workers
stop with the server, a version is the bytes it was loaded from; the in-process runner gives
the same answers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from framewire.client import Client, FramewireError
from framewire.oip import grpc_service_pb2 as oip
from framewire.oip import grpc_service_pb2_grpc
from framewire.v1 import inference_pb2 as pb
from support import artifacts
from support.images import encode, random_image
from support.server import RunningServer
from support.processes import gone, kill_and_wait as kill_worker
from support.waiting import wait_until


def worker_pids(server) -> list[int]:
    return [w.proc.pid for m in server.server.repo.served() for w in m.runner.processes]






def test_with_no_live_worker_a_request_fails_at_once_and_the_worker_comes_back(tiny_repo):
    with RunningServer(repo=str(tiny_repo)) as server, Client(server.address, retries=0, timeout=60) as c:
        image = encode(random_image(1))
        before = c.predict(image, model="tiny", return_raw=True)
        (pid,) = worker_pids(server)
        kill_worker(pid)
        with pytest.raises(FramewireError) as info:  # not a wait for the restart
            c.predict(image, model="tiny")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "no worker process is running (1 restarting after a crash); retry shortly" in info.value.message

        def answered():
            try:
                return c.predict(image, model="tiny", return_raw=True)
            except FramewireError as exc:
                assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
                return None

        after = wait_until(answered, timeout=120, what="the restarted worker to serve")
        assert worker_pids(server) != [pid]
        np.testing.assert_allclose(after.raw["logits"], before.raw["logits"], atol=1e-6)
        assert c.server_status().serving

        def restarted():  # what the page, `status` and `top` show of it, sampled each second
            (model,) = json.loads(c.server_status().status_json)["models"]
            (worker,) = model["workers"]
            return worker if (worker["state"], worker["restarts"]) == ("running", 1) else None

        seen = wait_until(restarted, 30, "the restarted worker running in the status document")
        assert seen["pid"] == worker_pids(server)[0] != pid


def test_a_batch_meant_for_a_dead_worker_goes_to_a_live_one(tiny_repo, caplog):
    """Two instances, one killed: requests are answered by the other at once,
    and the restarted one takes traffic only once it is warm."""
    caplog.set_level(logging.INFO, logger="framewire.worker")

    def warm_workers() -> int:
        return sum("ready on cpu" in r.getMessage() for r in caplog.records)

    server = RunningServer(repo=str(tiny_repo), instances_per_device=2)
    with Client(server.address, retries=0, timeout=60) as c:
        image = encode(random_image(2))
        assert warm_workers() == 2
        victim, survivor = worker_pids(server)
        kill_worker(victim)
        answers = [c.predict(image, model="tiny") for _ in range(4)]  # the batches the victim would have run too
        assert warm_workers() == 2, "a request waited for the restarted worker to warm up"
        assert [a.version for a in answers] == [1, 1, 1, 1]

        wait_until(lambda: warm_workers() == 3, timeout=120, what="the restarted worker to be warm")
        kill_worker(survivor)
        assert c.predict(image, model="tiny").version == 1  # served by the restarted worker
    running = worker_pids(server)  # the restarted one, and the survivor's replacement (perhaps still loading)
    server.stop()
    for pid in running:  # every worker stops with the server
        wait_until(lambda: gone(pid), timeout=10, what=f"worker {pid} to stop")


def test_the_in_process_runner_answers_like_the_worker(tiny_repo):
    images = [encode(random_image(i)) for i in range(5)]
    answers = {}
    for runner in ("process", "thread"):
        with RunningServer(repo=str(tiny_repo), runner=runner) as server, Client(server.address) as c:
            answers[runner] = [p.raw["logits"] for p in c.batch_predict(images, model="tiny", return_raw=True)]
            assert server.server.repo.served()[0].runner.__class__.__name__ == (
                "ProcessRunner" if runner == "process" else "ThreadRunner")
    for a, b in zip(answers["process"], answers["thread"]):
        np.testing.assert_allclose(a, b, atol=1e-6)


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


def test_one_worker_process_hosts_two_models_by_id(tiny_repo, tmp_path):
    import subprocess

    from framewire.service.ipc import Connection, SharedBuffer
    from framewire.service.payloads import Payload, pack, packed_size
    from framewire.service.worker_runner import WORKER_COMMAND
    from framewire.service.worker_settings import WorkerSettings
    from support.artifacts import export_tiny

    other = export_tiny(tmp_path, "other", 1, seed=7)
    proc = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    connection = Connection(proc.stdout, proc.stdin)
    try:
        for model_id, path in (("tiny:1", tiny_repo / "tiny" / "1" / "model.fwa"), ("other:1", other)):
            settings = WorkerSettings(model_id=model_id, artifact=str(path))
            reply, _ = connection.request({"op": "load", "settings": settings.to_json()}).result(120)
            assert (reply["op"], reply["model"], reply["task"]) == ("loaded", model_id, "classification")
        image = random_image(3)
        payloads = [Payload("uint8", image, *image.shape[:2]), Payload("encoded", encode(image), *image.shape[:2], "PNG")]
        buffer = SharedBuffer(packed_size(payloads))
        assert connection.request({"op": "buffer", "model": "tiny:1", "slot": 0, "path": buffer.path,
                                   "size": buffer.size}).result(30)[0]["op"] == "buffer_ok"
        layout = pack(payloads, buffer.map)
        # Shared memory is each model's own: slot 0 of tiny:1 is not slot 0 of other:1.
        reply, _ = connection.request({"op": "run", "model": "other:1", "slot": 0, "batch": layout}).result(30)
        assert reply["op"] == "error" and "no shared memory slot" in reply["message"]
        assert connection.request({"op": "buffer", "model": "other:1", "slot": 0, "path": buffer.path,
                                   "size": buffer.size}).result(30)[0]["op"] == "buffer_ok"
        logits = {}
        for model_id in ("tiny:1", "other:1"):
            reply, payload = connection.request({"op": "run", "model": model_id, "slot": 0, "batch": layout}).result(60)
            assert reply["op"] == "done" and reply["rows"] == [0, 1] and reply["errors"] == {}
            logits[model_id] = np.frombuffer(payload, np.float32).reshape(reply["output"]["shape"])
            np.testing.assert_allclose(logits[model_id][0], logits[model_id][1], atol=1e-6)  # PNG = the same pixels
        assert np.abs(logits["tiny:1"] - logits["other:1"]).max() > 1e-3  # two different networks
        assert connection.request({"op": "unload", "model": "tiny:1"}).result(30)[0]["op"] == "unloaded"
        reply, _ = connection.request({"op": "run", "model": "tiny:1", "slot": 0, "batch": layout}).result(30)
        assert reply["op"] == "error" and "no model" in reply["message"]
        reply, _ = connection.request({"op": "run", "model": "other:1", "slot": 0, "batch": layout}).result(60)
        assert reply["op"] == "done"
        buffer.close()
    finally:
        proc.stdin.close()
        proc.wait(30)


def thread_niceness(pid: int) -> set[int]:
    """The nice value of every thread of a process (field 19 of /proc/PID/task/TID/stat)."""
    values = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        values.add(int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16]))
    return values


def test_worker_nice_lowers_every_worker_thread_and_not_the_front_end(tiny_repo):
    with RunningServer(repo=str(tiny_repo), worker_nice=7) as server, Client(server.address) as c:
        c.predict(encode(random_image(1)), model="tiny")
        def listed():  # the status document is sampled each second
            (model,) = json.loads(c.server_status().status_json)["models"]
            return [w["pid"] for w in model["workers"]]

        pids = wait_until(listed, 30, "the workers in the status document")
        assert all(thread_niceness(pid) == {7} for pid in pids)
        assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == 0  # the front end (here: this process) keeps its own


def test_a_worker_exits_when_its_front_end_is_gone_even_with_its_pipe_held_open():
    """The closed pipe normally ends a worker; here another process holds its
    stdin open after the front end that started it has exited."""
    import subprocess
    import sys

    script = (  # a front end that starts a worker the way the server does, then exits
        "import subprocess\n"
        "from framewire.service.device_workers import SharedWorker\n"
        "w = SharedWorker('cpu', 0)\n"
        "w.ensure_running()\n"
        "h = subprocess.Popen(['sleep', '120'], pass_fds=[w.proc.stdin.fileno()], stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL, start_new_session=True)\n"
        "print(w.proc.pid, h.pid, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    worker, holder = (int(p) for p in done.stdout.split())
    try:
        wait_until(lambda: gone(worker), timeout=30, what="the orphaned worker to exit")
    finally:
        for pid in (holder, worker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
