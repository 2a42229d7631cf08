"""Model worker processes: a crash is survived; the in-process runner gives the same answers."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np

from framewire.client import Client
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

        def restarted():
            (model,) = json.loads(c.server_status().status_json)["models"]
            return model["workers"] if model["workers"][0]["restarts"] == 1 else None

        (seen,) = wait_until(restarted, 30, "the restart in the status document")
        assert seen["state"] == "running" and seen["pid"] == worker.proc.pid != pid


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
