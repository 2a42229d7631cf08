"""The status document and its history, built from plain figures (no server)."""

from __future__ import annotations

import json
import math

import pytest

from framewire.service.gpu import GpuReading
from framewire.service.host_figures import HostFigures, ProcessFigures, ProcessRole
from framewire.service.runner import WorkerStatus
from framewire.service.status_document import build_document, visible_json
from framewire.service.status_history import StatusHistory, rounded
from framewire.service.status_inputs import ArtifactFigures, ServerFigures, StatusInputs, VersionFigures

SERVER = ServerFigures(version="9.9", uptime_seconds=12.34, serving=True, devices=("cpu",), dtype="float32",
                       grpc_port=8500, metrics_port=9090)
HOST = HostFigures(cpu_count=2, cpu_percent=40.0, memory_total_bytes=8 << 30, memory_available_bytes=4 << 30)


def version(requests: int = 0, *, model: str = "tiny", number: int = 1, loaded: bool = True, **extra) -> VersionFigures:
    """A READY version that has answered `requests` one-image requests, each queued 2 ms and computed 5 ms."""
    figures = dict(model=model, version=number, state="READY", device="cpu", task="classification", loaded=loaded,
                   requests_ok=requests, images=requests, batches=requests, timed_requests=requests,
                   queue_seconds_total=0.002 * requests, compute_seconds_total=0.005 * requests,
                   preprocess_seconds_total=0.001 * requests, queue_depth=3, queue_capacity=64)
    return VersionFigures(**{**figures, **extra})


def inputs(at: float, *versions: VersionFigures, **extra) -> StatusInputs:
    return StatusInputs(time=at, server=SERVER, host=HOST, versions=versions, **extra)


def test_a_sample_holds_the_rates_of_the_second_since_the_previous_one():
    history = StatusHistory(seconds=60)
    first = history.record(inputs(100.0, version(10)))
    assert first["models"]["tiny:1"]["images_per_second"] is None  # nothing to compare with yet
    second = history.record(inputs(101.0, version(30, requests_failed=2)))
    figures = second["models"]["tiny:1"]
    assert figures["images_per_second"] == 20 and figures["requests_per_second"] == 20
    assert figures["errors_per_second"] == 2
    assert figures["queue_ms"] == pytest.approx(2.0) and figures["compute_ms"] == pytest.approx(5.0)
    assert figures["queue_depth"] == 3
    idle = history.record(inputs(102.0, version(30, requests_failed=2)))["models"]["tiny:1"]
    assert idle["images_per_second"] == 0 and idle["queue_ms"] is None  # no request finished: no mean, not 0 ms


def test_windows_reach_back_as_far_as_asked_and_held():
    history = StatusHistory(seconds=60)
    for second in range(11):
        history.record(inputs(100.0 + second, version(10 * second * second)))
    now = history.window("tiny:1", 5)
    assert now["window_seconds"] == 5 and now["images_per_second"] == (1000 - 250) / 5
    whole = history.window("tiny:1", 60)
    assert whole["window_seconds"] == 10 and whole["images_per_second"] == 100
    assert history.window("other:1", 5) is None


def test_the_ring_keeps_the_last_samples_only():
    history = StatusHistory(seconds=5, interval=1.0)
    for second in range(20):
        history.record(inputs(float(second), version(second)))
    times = [s["time"] for s in history.samples()]
    assert times == [15.0, 16.0, 17.0, 18.0, 19.0]


def test_a_version_that_is_not_loaded_has_no_rates():
    history = StatusHistory()
    broken = version(0, number=2, loaded=False, state="UNAVAILABLE", reason="not a framewire artifact")
    history.record(inputs(1.0, broken))
    sample = history.record(inputs(2.0, broken))
    assert sample["models"]["tiny:2"]["images_per_second"] is None
    assert history.window("tiny:2", 5) is None
    document = build_document(inputs(2.0, broken), history, sample)
    (model,) = document["models"]
    assert model["state"] == "UNAVAILABLE" and model["reason"] == "not a framewire artifact" and model["now"] == {}


def test_the_document_carries_every_section_and_null_for_what_is_unknown():
    history = StatusHistory()
    workers = (WorkerStatus(instance=0, device="cpu", state="running", pid=42, restarts=1),)
    front = ProcessFigures(ProcessRole(7, "front end"), cpu_percent=12.5, rss_bytes=100, pss_bytes=80)
    worker = ProcessFigures(ProcessRole(42, "worker", "tiny", 1, 0), cpu_percent=None, rss_bytes=300, pss_bytes=None)
    gpu = GpuReading(index=0, name="NVIDIA H200", uuid="GPU-1", utilization_percent=87, memory_used_bytes=1,
                     memory_total_bytes=2, power_watts=512.0, temperature_celsius=61, sm_clock_hertz=1.98e9)
    tiny = version(10, batch_sizes={8: 1, 1: 2}, workers=workers, minute={"latency_p99_ms": 12.345678},
                   artifact=ArtifactFigures(path="/m/tiny/1/model.fwa", weights_sha256="ab" * 32, signer="k1",
                                            signature_checked=True))
    history.record(inputs(1.0, version(0)))
    later = inputs(2.0, tiny, processes=(front, worker), gpus=(gpu,),
                   requests_by_code={"tiny": {"OK": 10, "INVALID_ARGUMENT": 2}, "_unknown": {"NOT_FOUND": 1}})
    document = json.loads(json.dumps(build_document(later, history, history.record(later))))
    assert document["schema"] == 1 and document["time"] == 2.0
    assert document["server"]["version"] == "9.9" and document["server"]["devices"] == ["cpu"]
    assert document["server"]["rss_bytes"] == 400 and document["server"]["pss_bytes"] == 80
    assert document["server"]["cpu_percent"] == 12.5  # the worker's CPU is unknown, not 0
    assert [p["role"] for p in document["processes"]] == ["front end", "worker"]
    assert document["processes"][1]["cpu_percent"] is None
    (reading,) = document["gpus"]
    assert reading["sm_clock_mhz"] == 1980 and reading["power_limit_watts"] is None
    (model,) = document["models"]
    assert model["batch_sizes"] == [[1, 2], [8, 1]]
    assert model["workers"] == [{"instance": 0, "device": "cpu", "state": "running", "pid": 42, "restarts": 1}]
    assert model["artifact"]["signer"] == "k1" and model["artifact"]["signature_checked"]
    assert model["requests_by_code"] == {"OK": 10, "INVALID_ARGUMENT": 2}
    assert model["minute"]["latency_p99_ms"] == 12.35 and model["now"]["images_per_second"] == 10
    assert model["queue_depth"] == 3 and model["queue_capacity"] == 64
    assert document["requests_by_code"]["_unknown"] == {"NOT_FOUND": 1}
    assert document["sample"]["gpus"]["0"]["utilization_percent"] == 87


def test_a_model_limited_token_sees_only_its_models():
    history = StatusHistory()
    both = inputs(1.0, version(1), version(1, model="secret"),
                  processes=(ProcessFigures(ProcessRole(1, "front end")), ProcessFigures(ProcessRole(2, "worker", "secret", 1))),
                  requests_by_code={"tiny": {"OK": 1}, "secret": {"OK": 1}, "_unknown": {"NOT_FOUND": 1}})
    raw = json.dumps(build_document(both, history, history.record(both))).encode()
    assert visible_json(raw, lambda name: True) == raw.decode()
    seen = json.loads(visible_json(raw, lambda name: name == "tiny"))
    assert [m["model"] for m in seen["models"]] == ["tiny"]
    assert set(seen["requests_by_code"]) == {"tiny"}
    assert [p["role"] for p in seen["processes"]] == ["front end"]
    assert set(seen["sample"]["models"]) == {"tiny:1"}


def test_a_shared_worker_shows_a_limited_token_only_the_models_it_may_see():
    """A worker process hosts every model on its device: a token limited to
    tiny sees the process (its pid and figures) with tiny alone among its
    models, and no process that hosts only models it may not see."""
    history = StatusHistory()
    shared = ProcessRole(2, "worker", "secret", 1, 0, models=("secret:1", "tiny:1"))
    only_secret = ProcessRole(3, "worker", "secret", 1, 1, models=("secret:1",))
    both = inputs(1.0, version(1), version(1, model="secret"),
                  processes=(ProcessFigures(ProcessRole(1, "front end")), ProcessFigures(shared, pss_bytes=500),
                             ProcessFigures(only_secret, pss_bytes=400)))
    raw = json.dumps(build_document(both, history, history.record(both))).encode()
    everything = json.loads(raw)
    assert everything["processes"][1]["models"] == ["secret:1", "tiny:1"]
    seen = json.loads(visible_json(raw, lambda name: name == "tiny"))
    assert [(p["pid"], p.get("models")) for p in seen["processes"]] == [(1, []), (2, ["tiny:1"])]
    assert (seen["processes"][1]["model"], seen["processes"][1]["version"]) == ("tiny", 1)
    assert seen["processes"][1]["pss_bytes"] == 500


def test_rounding_keeps_significant_digits():
    assert rounded(1234.5678) == 1235 and rounded(0.000123456) == 0.0001235 and rounded(0.0) == 0.0
    assert rounded(None) is None and rounded(math.nan) is None and rounded(12.3456, 3) == 12.3
