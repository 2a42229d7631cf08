"""The real `framewire serve` process: drain on SIGTERM, CPU fallback, the README's run command."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from framewire.client import Client, FramewireError
from support.images import CAT_CLASSES, encode, random_image
from support.server import ServerProcess
from support.waiting import wait_for_queue_depth, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_finishes_in_flight_work_and_exits_zero(tiny_repo):
    server = ServerProcess("--repo", str(tiny_repo), "--device", "cpu", "--max-batch-size", "64",
                           "--max-queue-delay-us", "1500000", "--drain-seconds", "20")
    try:
        image = encode(random_image(1))

        def one(_):
            with Client(server.address, retries=0, timeout=30) as c:
                return c.predict(image, model="tiny")

        with cf.ThreadPoolExecutor(4) as pool:
            in_flight = [pool.submit(one, i) for i in range(4)]
            with Client(server.address) as c:
                wait_for_queue_depth(c, "tiny", 4)  # all four are waiting in the batcher
            assert server.terminate() == 0
            answers = [f.result(timeout=30) for f in in_flight]
        assert [a.version for a in answers] == [1, 1, 1, 1]
        assert "draining" in server.output() and "stopped" in server.output()
        with Client(server.address, retries=0, timeout=5) as c, pytest.raises(FramewireError) as info:
            c.predict(image, model="tiny")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.close()


def test_without_cuda_auto_falls_back_to_the_cpu_and_says_why(tiny_repo):
    server = ServerProcess("--repo", str(tiny_repo), "--device", "auto", env={"CUDA_VISIBLE_DEVICES": ""})
    try:
        with Client(server.address) as c:
            status = c.server_status()
            assert [d.name for d in status.devices] == ["cpu"]
            assert "no CUDA device is visible" in status.device_fallback_reason
            assert c.predict(encode(random_image(2)), model="tiny").device == "cpu"
        assert "running on the CPU" in server.output()
    finally:
        server.close()


def test_an_explicit_cuda_device_that_is_missing_is_a_clear_start_up_error(tiny_repo):
    framewire = shutil.which("framewire")
    done = subprocess.run(
        [framewire, "serve", "--repo", str(tiny_repo), "--port", "0", "--device", "cuda"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2
    assert "no CUDA device is visible; use --device auto" in done.stderr


@pytest.mark.parametrize("taken", ["--port", "--metrics-port"])
def test_a_port_in_use_is_a_clear_start_up_error_and_nothing_is_left_running(tiny_repo, taken):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        ports = {"--port": "0", "--metrics-port": "0", taken: port}
        done = subprocess.run([shutil.which("framewire"), "serve", "--repo", str(tiny_repo), "--host", "127.0.0.1",
                               "--port", ports["--port"], "--metrics-port", ports["--metrics-port"]],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("framewire serve: cannot ") and f"127.0.0.1:{port}" in last and taken in last
    assert "Traceback" not in done.stderr and "never awaited" not in done.stderr


def test_bad_settings_are_refused_before_start(tiny_repo):
    framewire = shutil.which("framewire")
    done = subprocess.run([framewire, "serve", "--repo", str(tiny_repo), "--max-batch-size", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "max_batch_size=0: must be 1..4096" in done.stderr


def test_the_readme_run_command_serves_the_demo_and_predict_prints_a_cat(tmp_path, chelsea_jpeg):
    # `make serve` as the README runs it (after the install step): exports the
    # demo into an empty repository, then serves it.
    repo = tmp_path / "models"
    repo.mkdir()
    server = ServerProcess(argv=["make", "-s", "serve", f"REPO={repo}", "PORT=0", "METRICS_PORT=0", "HOST=127.0.0.1"], cwd=str(ROOT),
                           ready_timeout=300)
    try:
        assert (repo / "efficientnet_lite0" / "1" / "model.fwa").exists()
        cat = tmp_path / "cat.jpg"
        cat.write_bytes(chelsea_jpeg)
        done = subprocess.run(
            [shutil.which("framewire"), "predict", "--server", server.address, "--model", "efficientnet_lite0",
             str(cat), "--json"],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        first = json.loads(done.stdout)["classes"][0]
        assert first["index"] in CAT_CLASSES
        # The live page is there too, with no further step.
        page = re.search(r"live page at (http://127\.0\.0\.1:\d+/)", server.output()).group(1)
        with urllib.request.urlopen(page, timeout=30) as response:
            assert b"/static/app.js" in response.read()
        def listed() -> list:
            with urllib.request.urlopen(page + "api/status", timeout=30) as response:
                return json.loads(response.read())["models"]

        # The document is sampled every second: the sample before the version turned READY may still be the latest.
        wait_until(lambda: [(m["model"], m["state"]) for m in listed()] == [("efficientnet_lite0", "READY")], 10,
                   "the status document to list the demo model READY")
        server.terminate()  # make itself dies of the signal; the server it started drains
        wait_until(lambda: "stopped" in server.output(), 30, "the server started by make to log that it stopped")
    finally:
        server.close()
