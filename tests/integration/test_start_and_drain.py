"""Starting and stopping as a new user meets them: a repository or model
name that is not there is a start-up error naming what is, the start-up line
says exactly what is served and why the rest is not, and a draining server
ends open streams at once instead of waiting out --drain-seconds."""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from framewire.client import Client
from framewire.service.config import ConfigError, ServeConfig
from framewire.service.repository import ModelRepository
from framewire.service.streams import DRAINING_MESSAGE
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc
from support.artifacts import export_tiny
from support.images import encode, random_image
from support.server import RunningServer, ServerProcess

FRAME = encode(random_image(3))


def check(repo, **settings) -> None:
    ModelRepository(ServeConfig(repo=str(repo), **settings).validate(), build=None).check_contents()


def test_a_missing_or_empty_repository_and_unknown_models_are_start_up_errors(tmp_path, tiny_repo):
    with pytest.raises(ConfigError, match=r"model repository .*nowhere does not exist; export a model into it"):
        check(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"holds no model \(<repo>/<model>/<version>/model.fwa\)"):
        check(tmp_path)
    with pytest.raises(ConfigError, match=r"--models names efficientnet, none, which .* does not hold "
                                          r"\(it holds: tiny\); correct the name, or pass --allow-empty"):
        check(tiny_repo, models=["efficientnet", "tiny", "none"])
    check(tiny_repo, models=["tiny"])
    for repo in (tmp_path / "nowhere", tmp_path):
        check(repo, allow_empty=True, models=["later"])


def test_the_cli_says_it_in_one_line_and_exits_2(tiny_repo):
    done = subprocess.run([shutil.which("framewire"), "serve", "--repo", str(tiny_repo), "--port", "0",
                           "--metrics-port", "-1", "--models", "efficientnet,tiny"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"framewire serve: --models names efficientnet, which {tiny_repo} does not hold (it holds: tiny); "
        "correct the name, or pass --allow-empty to start without models and load them as they appear"]


def test_allow_empty_starts_on_a_missing_repository_and_loads_models_as_they_appear(tmp_path):
    repo = tmp_path / "later"
    with RunningServer(repo=str(repo), allow_empty=True, runner="thread") as server, \
            Client(server.address, retries=0) as client:
        assert not client.list_models().models
        export_tiny(repo, "tiny", 1)
        server.poll()
        assert client.predict(FRAME, model="tiny").version == 1


def test_the_start_up_line_names_what_is_ready_and_why_the_rest_is_not(tmp_path):
    for version in (1, 2, 3):
        export_tiny(tmp_path, "tiny", version, seed=version)
    artifact = tmp_path / "tiny" / "3" / "model.fwa"
    artifact.write_bytes(artifact.read_bytes()[:1000])  # a half-copied file
    server = ServerProcess("--repo", str(tmp_path), "--version-policy", "all", "--runner", "thread")
    try:
        line = next(x for x in server.output().splitlines() if "serving: " in x)
        ready, not_ready = line.split("serving: ", 1)[1].split("; not serving: ")
        assert ready == "tiny v2, tiny v1"
        assert not_ready.startswith("tiny v3 (UNAVAILABLE: ") and "truncated" in not_ready
    finally:
        server.close()


class Camera:
    """Frames at about 50 a second on one streaming call until stopped; its
    answers and how the call ended are collected from a thread."""

    def __init__(self, call_factory, make_request):
        self.stop = threading.Event()
        self.answers: queue.Queue = queue.Queue()
        self.ended: list[grpc.RpcError | None] = []

        def requests():
            i = 0
            while not self.stop.is_set():
                yield make_request(i)
                i += 1
                time.sleep(0.02)

        self.call = call_factory(requests())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for answer in self.call:
                self.answers.put(answer)
            self.ended.append(None)
        except grpc.RpcError as exc:
            self.ended.append(exc)

    def wait_for_answers(self, count: int, timeout: float = 60) -> list:
        return [self.answers.get(timeout=timeout) for _ in range(count)]

    def close(self) -> None:
        self.stop.set()
        self.call.cancel()
        self.reader.join(10)


def test_a_draining_server_ends_open_streams_of_both_apis_and_stops_without_waiting(tiny_repo):
    server = RunningServer(repo=str(tiny_repo), runner="thread")
    channel = grpc.insecure_channel(server.address)
    native = Camera(inference_pb2_grpc.ModelInferenceStub(channel).StreamPredict,
                    lambda i: pb.StreamFrame(stream_id="cam", frame_number=i, model="tiny", image=pb.Image(encoded=FRAME)))
    protocol = Camera(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer, lambda i: oip_request(i))
    try:
        assert all(a.status.code == 0 for a in native.wait_for_answers(5))
        assert all(not a.error_message for a in protocol.wait_for_answers(5))
        started = time.monotonic()
        server.stop(grace=300, timeout=60)  # an open stream used to hold the drain for all of `grace`
        assert time.monotonic() - started < 60
        for camera in (native, protocol):
            camera.reader.join(30)
            assert len(camera.ended) == 1 and camera.ended[0] is not None
            assert camera.ended[0].code() == grpc.StatusCode.UNAVAILABLE
            assert camera.ended[0].details() == DRAINING_MESSAGE
        while not native.answers.empty():  # the frames read before the drain were answered, not failed
            assert native.answers.get().status.code == 0
    finally:
        native.close()
        protocol.close()
        channel.close()


def oip_request(i: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="tiny", id=str(i))
    tensor = request.inputs.add(name="encoded_images", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(FRAME)
    return request
