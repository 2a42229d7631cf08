"""What operators see: /metrics under real traffic, status, top, and logs."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from framewire.cli import main as cli
from framewire.client import Client, FramewireError
from support.images import encode, random_image
from support.metrics import scrape, value
from support.nvml import FakeGpu, FakeNvml
from support.server import RunningServer, ServerProcess


@pytest.fixture(scope="module")
def loaded_server(tiny_repo):
    """A server that has seen known traffic: native, protocol and bad requests."""
    nvml = FakeNvml([FakeGpu(processes=[])])
    with RunningServer(repo=str(tiny_repo), max_batch_size=8, max_queue_delay_us=20_000, nvml=nvml) as server:
        images = [encode(random_image(i)) for i in range(24)]

        def native(image):
            with Client(server.address, retries=0) as c:
                return c.predict(image, model="tiny")

        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(native, images))
        with Client(server.address, retries=0) as c:
            c.batch_predict(images[:5], model="tiny")
            for bad in (b"", b"garbage"):
                with pytest.raises(FramewireError):
                    c.predict(bad, model="tiny")
            with pytest.raises(FramewireError):
                c.predict(images[0], model="no_such_model")
        tc = triton.InferenceServerClient(server.address)
        tensor = triton.InferInput("images", [3, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(np.stack([random_image(i, 32, 32) for i in range(3)]))
        tc.infer("tiny", [tensor])
        yield server


def test_request_counts_equal_the_requests_sent(loaded_server):
    samples = scrape(loaded_server.metrics_url)
    total = "framewire_requests_total"
    assert value(samples, total, model="tiny", api="native", code="OK") == 24 + 1
    assert value(samples, total, model="tiny", api="native", code="INVALID_ARGUMENT") == 2
    assert value(samples, total, model="_unknown", api="native", code="NOT_FOUND") == 1
    assert value(samples, total, model="tiny", api="oip", code="OK") == 1


def test_the_batch_size_histogram_sums_to_the_inferences(loaded_server):
    samples = scrape(loaded_server.metrics_url)
    inferences = value(samples, "framewire_inferences_total", model="tiny", version="1")
    executions = value(samples, "framewire_executions_total", model="tiny", version="1")
    assert inferences == 24 + 5 + 3
    assert value(samples, "framewire_batch_size_sum", model="tiny", version="1") == inferences
    assert value(samples, "framewire_batch_size_count", model="tiny", version="1") == executions
    assert executions < inferences  # concurrent requests were batched


def test_latency_histograms_are_populated(loaded_server):
    samples = scrape(loaded_server.metrics_url)
    for name in ("framewire_request_duration_seconds", "framewire_queue_duration_seconds",
                 "framewire_compute_duration_seconds", "framewire_preprocess_duration_seconds"):
        assert value(samples, f"{name}_count", model="tiny") > 0, name
        assert value(samples, f"{name}_sum", model="tiny") > 0, name
        buckets = [s for s in samples[f"{name}_bucket"] if s.labels["model"] == "tiny"]
        assert any(s.labels["le"] == "+Inf" for s in buckets)


def test_error_counters_move_with_bad_requests(loaded_server):
    url = loaded_server.metrics_url
    before = value(scrape(url), "framewire_requests_total", model="tiny", code="INVALID_ARGUMENT")
    with Client(loaded_server.address, retries=0) as c, pytest.raises(FramewireError):
        c.predict(b"\x00" * 10, model="tiny")
    after = value(scrape(url), "framewire_requests_total", model="tiny", code="INVALID_ARGUMENT")
    assert after == before + 1


def test_queue_depth_is_back_to_zero_and_the_state_is_ready(loaded_server):
    samples = scrape(loaded_server.metrics_url)
    assert value(samples, "framewire_queue_depth", model="tiny", version="1") == 0
    assert value(samples, "framewire_model_state", model="tiny", version="1", state="READY") == 1
    assert value(samples, "framewire_model_state", model="tiny", version="1", state="LOADING") == 0


def test_gpu_and_process_metrics(loaded_server):
    samples = scrape(loaded_server.metrics_url)
    assert value(samples, "framewire_gpu_utilization_ratio", gpu="0", name="NVIDIA H200") == 0.87
    assert value(samples, "framewire_gpu_memory_total_bytes", gpu="0") == 141 * 2**30
    assert value(samples, "framewire_gpu_power_limit_watts", gpu="0") == 700.0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert "process_cpu_seconds_total" in samples


def test_clients_cannot_create_metric_series(loaded_server):
    """Label values come only from what the server serves: versions and model
    names a client makes up all count under one fixed value."""
    made_up = range(1000, 1100)
    with Client(loaded_server.address, retries=0) as c:
        for version in made_up:
            with pytest.raises(FramewireError):
                c.predict(b"\xff\xd8", model="tiny", version=version)
    tc = triton.InferenceServerClient(loaded_server.address)
    tensor = triton.InferInput("images", [1, 8, 8, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    for version in ("7", "99999999999999999999999"):
        for name in ("tiny", "made_up_model"):
            with pytest.raises(triton.InferenceServerException):
                tc.infer(name, [tensor], model_version=version)
    samples = scrape(loaded_server.metrics_url)
    labelled = [s for name, found in samples.items() if name.startswith("framewire_") for s in found]
    assert {s.labels["version"] for s in labelled if "version" in s.labels} <= {"", "1", "_unknown"}
    assert {s.labels["model"] for s in labelled if "model" in s.labels} <= {"tiny", "_unknown"}
    assert value(samples, "framewire_requests_total", model="tiny", version="_unknown", api="native",
                 code="NOT_FOUND") == len(made_up)


def test_without_nvml_there_are_no_gpu_metrics_and_nothing_fails(tiny_repo):
    with RunningServer(repo=str(tiny_repo)) as server:
        samples = scrape(server.metrics_url)
        with Client(server.address) as c:
            assert [d.name for d in c.server_status().devices] == ["cpu"]
    assert not [name for name in samples if name.startswith("framewire_gpu_")]
    assert "framewire_queue_depth" in samples


def test_server_status_reports_recent_rates_and_latency(loaded_server):
    with Client(loaded_server.address) as c:
        status = c.server_status()
    assert status.metrics_port == int(loaded_server.metrics_url.split(":")[2].split("/")[0])
    tiny = next(m for m in status.models if m.model == "tiny")
    assert tiny.requests_per_second > 0 and tiny.images_per_second > 0 and tiny.errors_per_second > 0
    assert 0 < tiny.latency_p50_ms <= tiny.latency_p99_ms
    assert tiny.average_batch_size >= 1


def test_status_prints_once(loaded_server, capsys):
    assert cli(["status", "--server", loaded_server.address]) == 0
    text = capsys.readouterr().out
    assert "serving" in text and "tiny" in text and "READY" in text and "P99 ms" in text
    assert cli(["status", "--server", loaded_server.address, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"][0]["model"] == "tiny"


def test_top_renders_a_frame_from_a_live_server(loaded_server, capsys):
    assert cli(["top", "--server", loaded_server.address, "--once"]) == 0
    frame = capsys.readouterr().out
    assert "MODEL" in frame and "tiny" in frame and "IMG/s 5s" in frame and "IMG/s 1m" in frame
    # Power, temperature and the batch-size distribution, as on the page.
    assert "NVIDIA H200  61C  512/700 W" in frame and "batch sizes tiny v1" in frame


def test_status_and_the_metrics_listener_give_the_same_document(loaded_server, capsys):
    metrics = loaded_server.metrics_url.removeprefix("http://").removesuffix("/metrics")

    def documents():
        assert cli(["status", "--server", loaded_server.address, "--json"]) == 0
        over_grpc = json.loads(capsys.readouterr().out)
        assert cli(["status", "--metrics", metrics, "--json"]) == 0
        return over_grpc, json.loads(capsys.readouterr().out)

    # Both read the one document the server samples each second; poll until
    # both reads fell within the same second.
    deadline = time.monotonic() + 30
    while (pair := documents())[0]["time"] != pair[1]["time"] and time.monotonic() < deadline:
        pass
    assert pair[0] == pair[1]
    tiny = next(m for m in pair[0]["models"] if m["model"] == "tiny")
    assert tiny["totals"]["images"] == 24 + 5 + 3 and tiny["state"] == "READY"
    assert pair[0]["gpus"][0]["power_watts"] == 512 and pair[0]["gpus"][0]["temperature_celsius"] == 61


def test_status_says_why_a_version_is_unavailable(tiny_repo, tmp_path, capsys):
    import shutil as sh

    repo = tmp_path / "repo"
    sh.copytree(tiny_repo / "tiny", repo / "tiny")
    (repo / "tiny" / "2").mkdir()
    (repo / "tiny" / "2" / "model.fwa").write_bytes(b"not an artifact")
    with RunningServer(repo=str(repo), version_policy="all") as server:
        assert cli(["status", "--server", server.address]) == 0
        text = capsys.readouterr().out
        assert cli(["status", "--server", server.address, "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
    assert "tiny v2 UNAVAILABLE: not a framewire artifact" in text and "MODEL_STATE" not in text
    broken = next(m for m in document["models"] if m["version"] == 2)
    assert broken["state"] == "UNAVAILABLE" and "re-export" in broken["reason"]


def test_status_reports_an_unreachable_server(capsys):
    assert cli(["status", "--server", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert cli(["status", "--metrics", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "cannot read http://127.0.0.1:1/api/status" in capsys.readouterr().err


def test_top_refreshes_in_a_terminal_and_quits_on_q(loaded_server):
    import os
    import pty
    import select
    import shutil
    import time

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([shutil.which("framewire"), "top", "--server", loaded_server.address, "--interval", "0.2"],
                            stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    seen, deadline = b"", time.monotonic() + 60
    try:
        while seen.count(b"MODEL") < 2 and time.monotonic() < deadline:  # two frames: it refreshes
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 65536)
        assert seen.count(b"MODEL") >= 2 and b"tiny" in seen
        os.write(controller, b"q")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)


def test_json_logs_carry_the_request_id(tiny_repo):
    server = ServerProcess("--repo", str(tiny_repo), "--device", "cpu", "--log-format", "json",
                           "--instances-per-device", "1")
    try:
        with grpc.insecure_channel(server.address) as channel:
            from framewire.v1 import inference_pb2 as pb
            from framewire.v1 import inference_pb2_grpc

            stub = inference_pb2_grpc.ModelInferenceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(pb.PredictRequest(model="tiny", image=pb.Image(encoded=b"")),
                             metadata=(("x-request-id", "trace-42"),), timeout=30)
            assert dict(info.value.trailing_metadata())["x-request-id"] == "trace-42"
        server.terminate()
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        refused = [line for line in lines if line.get("request_id") == "trace-42"]
        assert refused and "INVALID_ARGUMENT" in refused[0]["message"] and "image is empty" in refused[0]["message"]
        events = " ".join(line["message"] for line in lines)
        assert "is READY on cpu" in events and "draining" in events and "running on the CPU" not in events
    finally:
        server.close()


def test_the_metrics_endpoint_can_be_turned_off(tiny_repo):
    done = subprocess.run([sys.executable, "-m", "framewire", "serve", "--help"], capture_output=True, text=True)
    assert "--metrics-port" in done.stdout and "-1 turns it off" in done.stdout
    with RunningServer(repo=str(tiny_repo), metrics_port=-1) as server, Client(server.address) as c:
        assert c.server_status().metrics_port == 0
        # status and top still work, over gRPC.
        assert json.loads(c.server_status().status_json)["server"]["metrics_port"] == 0
