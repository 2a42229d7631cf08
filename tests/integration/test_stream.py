"""`framewire stream` and `CameraStream` against real servers: every frame
answered in order, stale frames skipped when the server falls behind, and a
server restart survived."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections import Counter

import grpc
import pytest

from framewire.client import Client
from framewire.stream import CameraStream
from support.images import encode, random_image
from support.server import RunningServer, ServerProcess
from support.waiting import wait_until

N_FRAMES = 200


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return [encode(random_image(1000 + i, 48, 64), "PNG") for i in range(N_FRAMES)]


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory, frames):
    folder = tmp_path_factory.mktemp("frames")
    for i, data in enumerate(frames):
        (folder / f"frame{i:04d}.png").write_bytes(data)
    return folder


def _warm(server: RunningServer) -> None:
    with Client(server.address) as client:  # the first request pays for lazy set-up in the server
        client.predict(encode(random_image(0)), model="tiny")


@pytest.fixture(scope="module")
def fast_server(tiny_repo):
    with RunningServer(repo=str(tiny_repo), runner="thread", max_batch_size=16) as running:
        _warm(running)
        yield running


@pytest.fixture(scope="module")
def slow_server(tiny_repo):
    """Every batch waits 200 ms for company: the server answers about ten frames a second."""
    with RunningServer(repo=str(tiny_repo), runner="thread", max_batch_size=64,
                       max_queue_delay_us=200_000) as running:
        _warm(running)
        yield running


def framewire(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([shutil.which("framewire"), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def play(stream: CameraStream, frames, fps: float) -> None:
    start = time.monotonic()
    for i, frame in enumerate(frames):
        delay = start + i / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stream.submit(frame)


def test_every_frame_is_answered_in_order_with_its_own_prediction(fast_server, frames):
    stream = CameraStream(fast_server.address, model="tiny", drop="none", max_in_flight=8)
    for frame in frames:
        stream.submit(frame)
    stream.close()
    results = list(stream.results())

    assert [r.frame_number for r in results] == list(range(N_FRAMES))
    assert all(r.ok and r.code == grpc.StatusCode.OK and r.latency_ms > 0 for r in results)
    with Client(fast_server.address) as client:
        expected = [p for i in range(0, N_FRAMES, 50) for p in client.batch_predict(frames[i:i + 50], model="tiny")]
    for got, want in zip(results, expected):
        assert [c.index for c in got.prediction.classes] == [c.index for c in want.classes]
        assert got.prediction.classes[0].score == pytest.approx(want.classes[0].score, abs=1e-5)
    summary = stream.stats.summary()
    assert (summary["captured"], summary["sent"], summary["answered"], summary["dropped"]) == (200, 200, 200, 0)


def test_a_slow_server_gets_the_latest_frames_and_latency_stays_bounded(slow_server, frames):
    stream = CameraStream(slow_server.address, model="tiny", max_in_flight=2, drop="oldest")
    play(stream, frames, fps=100)  # two seconds of frames, ten times what the server answers
    stream.close()
    results = list(stream.results())

    assert [r.frame_number for r in results] == list(range(N_FRAMES))
    statuses = Counter(r.status for r in results)
    assert statuses["dropped"] >= N_FRAMES // 2 and statuses["ok"] >= 5 and statuses["failed"] == 0, statuses
    assert results[-1].ok  # the newest frame is never the one dropped
    answered = [r.latency_ms for r in results if r.ok]
    # Queued instead of dropped, the last of 200 frames would wait some 10 s.
    assert max(answered) < 1500, answered
    assert stream.stats.summary()["p99_ms"] < 1500


def test_frames_that_wait_longer_than_max_age_are_skipped_by_the_server(slow_server, frames):
    stream = CameraStream(slow_server.address, model="tiny", max_in_flight=8, drop="none", max_age_ms=80)
    play(stream, frames[:40], fps=50)
    stream.close()
    results = list(stream.results())

    assert [r.frame_number for r in results] == list(range(40))
    skipped = [r for r in results if r.status == "skipped"]
    assert len(skipped) >= 30 and all(r.status in ("skipped", "dropped") for r in results)
    assert all(r.code == grpc.StatusCode.DEADLINE_EXCEEDED and r.prediction is None for r in skipped)
    assert all(r.latency_ms < 1000 for r in skipped)  # told at max_age, not after the 200 ms batch wait


def test_the_cli_streams_a_folder_of_frames_without_opencv(fast_server, frame_folder, tmp_path):
    no_opencv = tmp_path / "no-opencv"
    no_opencv.mkdir()
    (no_opencv / "cv2.py").write_text("raise ImportError('OpenCV is not installed here')\n")
    out = tmp_path / "results.jsonl"

    done = framewire("stream", str(frame_folder), "--model", "tiny", "--server", fast_server.address,
                     "--fps", "200", "--drop", "none", "--max-in-flight", "8", "--top-k", "2", "--out", str(out),
                     env={"PYTHONPATH": str(no_opencv)})

    assert done.returncode == 0, done.stderr
    rows = read_jsonl(out)
    assert [r["frame"] for r in rows] == list(range(N_FRAMES))
    assert all(r["status"] == "ok" and r["model"] == "tiny" and len(r["labels"]) == 2 for r in rows)
    assert "captured 200, sent 200, answered 200" in done.stdout
    assert "latency p50" in done.stdout

    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"
    unanswered = framewire("stream", str(frame_folder), "--model", "tiny", "--server", nobody, "--frames", "5",
                           "--drain-seconds", "0.5", "--quiet")
    assert unanswered.returncode == 1 and "no frame was answered" in unanswered.stderr
    assert "captured 5, " in unanswered.stdout

    (tmp_path / "clip.mp4").write_bytes(b"not really a video")
    needs_opencv = framewire("stream", str(tmp_path / "clip.mp4"), "--model", "tiny", "--server",
                             fast_server.address, env={"PYTHONPATH": str(no_opencv)})
    assert needs_opencv.returncode == 2 and "pip install 'framewire[camera]'" in needs_opencv.stderr


def test_fps_0_sends_every_frame_as_fast_as_the_server_answers(fast_server, frame_folder):
    done = framewire("stream", str(frame_folder), "--model", "tiny", "--server", fast_server.address,
                     "--fps", "0", "--frames", "60", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "captured 60, sent 60, answered 60, skipped 0 by the server and 0 by the client" in done.stdout


def test_the_cli_streams_a_video_file_and_writes_an_annotated_copy(fast_server, frames, tmp_path):
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for data in frames:
        writer.write(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    writer.release()
    out, annotated = tmp_path / "results.jsonl", tmp_path / "annotated.avi"

    done = framewire("stream", str(video), "--model", "tiny", "--server", fast_server.address, "--fps", "0",
                     "--drop", "none", "--max-in-flight", "8", "--out", str(out), "--annotate", str(annotated),
                     "--quiet")

    assert done.returncode == 0, done.stderr
    rows = read_jsonl(out)
    assert [r["frame"] for r in rows] == list(range(N_FRAMES))
    assert all(r["status"] == "ok" for r in rows)
    capture = cv2.VideoCapture(str(annotated))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == N_FRAMES
    assert done.stderr == ""  # --quiet: no per-second lines


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_stream_survives_a_server_restart_on_the_same_port(tiny_repo, frames):
    # A long drain: SIGTERM must end the open stream at once (UNAVAILABLE once the
    # frames read are answered) rather than wait it out while the camera goes on.
    args = ("--repo", str(tiny_repo), "--device", "cpu", "--poll-seconds", "0", "--drain-seconds", "300",
            "--instances-per-device", "1")
    first, second = ServerProcess(*args), None
    stream = CameraStream(first.address, model="tiny", max_in_flight=2, drop="oldest", max_backoff=0.5)
    warnings = Warnings()
    logging.getLogger("framewire.stream").addHandler(warnings)
    stop = threading.Event()

    def camera() -> None:  # 50 frames a second until told to stop
        i = 0
        while not stop.is_set():
            stream.submit(frames[i % N_FRAMES])
            i += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=camera)
    feeder.start()
    try:
        wait_until(lambda: stream.stats.totals["answered"] >= 30, 60, "answers from the first server")
        assert first.terminate(timeout=90) == 0  # not the 300 s of --drain-seconds
        assert "stopped" in first.output()
        before = stream.stats.totals["answered"]
        second = ServerProcess(*args, port=first.port)
        wait_until(lambda: stream.stats.totals["answered"] >= before + 30, 60, "answers from the second server")
    finally:
        logging.getLogger("framewire.stream").removeHandler(warnings)
        stop.set()
        feeder.join()
        stream.close()
        for server in (first, second):
            if server is not None:
                server.close()
    results = list(stream.results())
    assert any("broke (UNAVAILABLE: the server is shutting down" in m for m in warnings.messages), warnings.messages

    assert [r.frame_number for r in results] == list(range(len(results)))  # one each, in order, numbers kept rising
    assert stream.stats.reconnects >= 1
    statuses = Counter(r.status for r in results)
    assert statuses["ok"] >= 60 and statuses["ok"] + statuses["dropped"] + statuses["failed"] == len(results)
    outage = [i for i, r in enumerate(results) if r.status == "failed"]
    assert outage, "no frame was lost while the server was down"
    after = results[outage[-1] + 1:]
    assert sum(r.ok for r in after) >= 20  # the new server answers the frames that follow
    assert all(r.prediction.model == "tiny" for r in after if r.ok)


def test_client_stream_keeps_given_frame_numbers_and_one_result_type(fast_server, frames):
    from framewire.stream import FrameResult

    with Client(fast_server.address) as client:
        results = list(client.stream([(10, frames[0]), (11, frames[1]), (40, frames[2])], model="tiny", top_k=2))
        assert [r.frame_number for r in results] == [10, 11, 40]
        assert all(isinstance(r, FrameResult) and r.ok and not r.skipped for r in results)
        assert all(len(r.prediction.classes) == 2 for r in results)
        with pytest.raises(ValueError, match="frame_number=3 does not follow frame 4"):
            list(client.stream([(4, frames[0]), (3, frames[1])], model="tiny"))


def test_client_stream_to_no_server_reports_every_frame_then_raises_after_its_retries(frames):
    import socket

    from framewire.client import FramewireError

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"
    results = []
    start = time.monotonic()
    with Client(nobody, retries=1, timeout=5) as client, pytest.raises(FramewireError) as info:
        for result in client.stream(frames[:20], model="tiny"):
            results.append(result)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message.startswith(f"stream to {nobody} ended: ")
    assert time.monotonic() - start < 30  # one reconnect, not a retry without end
    assert [r.frame_number for r in results] == list(range(len(results))) and results
    assert all(r.status in ("failed", "dropped") and r.prediction is None for r in results)


def test_clients_cancelling_streams_mid_flight_log_no_error(fast_server, caplog):
    """Streams cancelled by their clients while answers are still being computed
    and written, on both APIs: the server drops them quietly (no ERROR, no
    "exception was never retrieved") and goes on serving."""
    import asyncio
    import gc
    import logging

    from framewire.oip import grpc_service_pb2 as oip
    from framewire.oip import grpc_service_pb2_grpc
    from framewire.v1 import inference_pb2 as pb
    from framewire.v1 import inference_pb2_grpc

    caplog.set_level(logging.INFO)
    image = encode(random_image(3, 48, 64))
    frames = [pb.StreamFrame(stream_id=f"c{i % 3}", frame_number=i, model="tiny", image=pb.Image(encoded=image))
              for i in range(30)]
    request = oip.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="encoded_images", datatype="BYTES", shape=[1]).contents.bytes_contents.append(image)

    async def cancel_after(call, answers: int) -> None:
        seen = 0
        async for _ in call:
            seen += 1
            if seen >= answers:
                call.cancel()
                return

    async def storm() -> None:
        async with grpc.aio.insecure_channel(fast_server.address) as channel:
            native = inference_pb2_grpc.ModelInferenceStub(channel)
            protocol = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(4):
                await asyncio.gather(
                    *(cancel_after(native.StreamPredict(iter(frames)), 1 + i % 5) for i in range(12)),
                    *(cancel_after(protocol.ModelStreamInfer(iter([request] * 30)), 1 + i % 5) for i in range(12)),
                    return_exceptions=True)

    fast_server.call(storm(), timeout=120)  # on the server's own loop: gRPC's asyncio client wants one loop
    wait_until(lambda: fast_server.server.streams.open_streams == 0, 30, "the cancelled streams to end")
    fast_server.call(asyncio.to_thread(gc.collect))  # surfaces futures whose exceptions nobody retrieved
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, problems[:3]
    with Client(fast_server.address) as client:
        assert client.predict(image, model="tiny").version == 1
