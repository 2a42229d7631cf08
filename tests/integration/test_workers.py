"""Model worker processes: a crash is survived; the in-process runner gives the same answers."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from framewire.client import Client
from support.images import encode, random_image
from support.server import RunningServer


def worker_pids(server) -> list[int]:
    return [w.proc.pid for m in server.server.repo.served() for w in m.runner.workers]


def test_a_killed_worker_is_restarted_and_the_server_keeps_serving(tiny_repo):
    with RunningServer(repo=str(tiny_repo)) as server, Client(server.address, retries=3, backoff=0.2) as c:
        image = encode(random_image(1))
        before = c.predict(image, model="tiny", return_raw=True)
        (worker,) = [w for m in server.server.repo.served() for w in m.runner.workers]
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
                "ProcessRunner" if runner == "process" else "ThreadRunner")
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
        assert connection.request({"op": "buffer", "slot": 0, "path": buffer.path, "size": buffer.size}).result(30)[0][
            "op"] == "buffer_ok"
        layout = pack(payloads, buffer.map)
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
