"""The Open Inference Protocol, driven by tritonclient against a real server."""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from framewire.client import Client
from support.images import CAT_CLASSES, random_image
from support.server import RunningServer
from support.waiting import wait_for_queue_depth


@pytest.fixture(scope="module")
def tc(server):
    return triton.InferenceServerClient(server.address)


def uint8_input(images: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return tensor


def bytes_input(files: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("encoded_images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return tensor


def test_live_ready_and_metadata(tc):
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("efficientnet_lite0") and not tc.is_model_ready("nope")
    meta = tc.get_server_metadata()
    assert meta.name == "framewire" and "model_repository" in meta.extensions
    model = tc.get_model_metadata("efficientnet_lite0")
    assert model.platform == "framewire" and list(model.versions) == ["1"]
    assert {i.name: i.datatype for i in model.inputs} == {"images": "UINT8", "encoded_images": "BYTES", "preprocessed": "FP32"}
    outputs = {o.name: list(o.shape) for o in model.outputs}
    assert outputs["logits"] == [-1, 1000] and "top_k_labels" in outputs


def test_model_config_says_enough_for_clients(tc):
    config = tc.get_model_config("efficientnet_lite0").config
    assert config.max_batch_size == 8 and config.platform == "framewire"
    assert [i.name for i in config.input] == ["images", "encoded_images", "preprocessed"]
    assert all(i.optional for i in config.input)
    assert list(config.input[2].dims) == [3, 224, 224]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert config.parameters["task"].string_value == "classification"


def test_the_demo_sees_a_cat_as_uint8_and_as_bytes(tc, chelsea, chelsea_jpeg):
    for tensor in (uint8_input(chelsea[None]), bytes_input([chelsea_jpeg])):
        result = tc.infer("efficientnet_lite0", [tensor])
        assert int(result.as_numpy("top_k_indices")[0, 0]) in CAT_CLASSES
        label = result.as_numpy("top_k_labels")[0, 0].decode()
        assert label in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_protocol_results_equal_the_native_apis(tc, client, chelsea):
    native = client.predict(chelsea, model="efficientnet_lite0", return_raw=True)
    result = tc.infer("efficientnet_lite0", [uint8_input(chelsea[None])],
                      outputs=[triton.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits")[0], native.raw["logits"], atol=1e-5)
    response = result.get_response()
    assert response.model_name == "efficientnet_lite0" and response.model_version == "1"


def test_float32_preprocessed_input_and_typed_contents(server, tc):
    images = np.stack([random_image(i, 32, 32) for i in range(3)])
    expected = tc.infer("tiny", [uint8_input(images)], outputs=[triton.InferRequestedOutput("logits")])
    with Client(server.address) as native:
        logits = [native.predict(image, model="tiny", return_raw=True).raw["logits"] for image in images]
    np.testing.assert_allclose(expected.as_numpy("logits"), np.stack(logits), atol=1e-5)

    # the same images as typed uint_contents, through the protocol's own stub
    request = service_pb2.ModelInferRequest(model_name="tiny", id="typed-1")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=list(images.shape))
    tensor.contents.uint_contents.extend(images.reshape(-1).tolist())
    request.outputs.add(name="logits")
    with grpc.insecure_channel(server.address) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert reply.id == "typed-1" and list(reply.outputs[0].shape) == [3, 5]
    np.testing.assert_allclose(np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(3, 5),
                               expected.as_numpy("logits"), atol=1e-6)


def test_preprocessed_float_input_on_the_demo(tc, chelsea, demo_artifact):
    from framewire.exporter import load_model
    from framewire.service.preprocess import PreprocessSpec, prepare

    loaded = load_model(demo_artifact)
    x, _ = prepare(chelsea, PreprocessSpec.from_artifact(loaded.artifact))
    tensor = triton.InferInput("preprocessed", [1, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(x.numpy()[None])
    result = tc.infer("efficientnet_lite0", [tensor])
    assert int(result.as_numpy("top_k_indices")[0, 0]) in CAT_CLASSES


def test_the_classification_extension(tc, chelsea):
    result = tc.infer("efficientnet_lite0", [uint8_input(chelsea[None])],
                      outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    top = [s.decode().split(":") for s in result.as_numpy("probabilities")[0]]
    assert len(top) == 3 and int(top[0][1]) in CAT_CLASSES
    assert float(top[0][0]) >= float(top[1][0]) and top[0][2] in {"tabby", "tiger cat", "Egyptian cat"}


def test_protocol_and_native_requests_share_device_batches(tiny_repo):
    with RunningServer(repo=str(tiny_repo), max_batch_size=16, max_queue_delay_us=1_500_000) as server:
        tc = triton.InferenceServerClient(server.address)
        images = [random_image(i, 32, 32) for i in range(8)]
        done: queue.Queue = queue.Queue()

        for i in range(4):  # async_infer
            tc.async_infer("tiny", [uint8_input(images[i][None])], callback=lambda result, error: done.put((result, error)))
        stream_results: queue.Queue = queue.Queue()
        streamer = triton.InferenceServerClient(server.address)
        streamer.start_stream(callback=lambda result, error: stream_results.put((result, error)))
        for i in range(4, 8):  # the streaming rpc
            streamer.async_stream_infer("tiny", [uint8_input(images[i][None])], request_id=f"s{i}")

        def native(image):
            with Client(server.address) as c:
                return c.predict(image, model="tiny")

        with cf.ThreadPoolExecutor(8) as pool:
            natives = list(pool.map(native, images))
        answers = [done.get(timeout=30) for _ in range(4)] + [stream_results.get(timeout=30) for _ in range(4)]
        streamer.stop_stream()
        assert all(error is None for _, error in answers)
        assert {a.timing["batch_size"] for a in natives} == {16}
        assert {int(r.get_response().parameters["batch_size"].int64_param) for r, _ in answers} == {16}
        assert sorted(r.get_response().id for r, _ in answers[4:]) == ["s4", "s5", "s6", "s7"]

        stats = tc.get_inference_statistics("tiny").model_stats[0]
        assert (stats.inference_count, stats.execution_count) == (16, 1)
        assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(16, 1)]
        assert stats.inference_stats.success.count == 16 and stats.inference_stats.queue.count == 16


def test_statistics_count_the_requests_sent(tc):
    # The module's server is shared: count what this test adds.
    before = tc.get_inference_statistics("tiny").model_stats[0]
    for i in range(5):
        tc.infer("tiny", [uint8_input(random_image(i, 32, 32)[None])])
    tc.infer("tiny", [uint8_input(np.stack([random_image(9, 32, 32)] * 3))])
    with pytest.raises(InferenceServerException):
        tc.infer("tiny", [bytes_input([b"not an image"])])
    stats = tc.get_inference_statistics("tiny").model_stats[0]
    assert stats.inference_stats.success.count - before.inference_stats.success.count == 6
    assert stats.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert stats.inference_count - before.inference_count == 8
    assert stats.inference_stats.success.ns > before.inference_stats.success.ns
    assert stats.last_inference > 0 and stats.last_inference >= before.last_inference


def test_repository_index_load_and_unload(tiny_repo):
    with RunningServer(repo=str(tiny_repo)) as server:
        tc = triton.InferenceServerClient(server.address)
        index = tc.get_model_repository_index().models
        assert [(m.name, m.version, m.state) for m in index] == [("tiny", "1", "READY")]
        tc.unload_model("tiny")
        assert not tc.is_model_ready("tiny")
        assert [(m.name, m.state) for m in tc.get_model_repository_index().models] == [("tiny", "UNAVAILABLE")]
        with pytest.raises(InferenceServerException, match="not served here"):
            tc.infer("tiny", [uint8_input(random_image(1, 32, 32)[None])])
        server.poll()  # polling leaves an unloaded model alone
        assert not tc.is_model_ready("tiny")
        tc.load_model("tiny")
        assert tc.is_model_ready("tiny")
        tc.infer("tiny", [uint8_input(random_image(1, 32, 32)[None])])
        with pytest.raises(InferenceServerException, match="not in the repository") as info:
            tc.load_model("missing")
        assert info.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("build, code, message", [
    (lambda: [triton.InferInput("images", [1, 4, 4, 3], "FP32")], "INVALID_ARGUMENT",
     "input 'images' has datatype FP32; it must be UINT8"),
    (lambda: [triton.InferInput("images", [1, 4, 4], "UINT8")], "INVALID_ARGUMENT",
     "input 'images' has shape [1, 4, 4]; it must be [N, H, W, 3]"),
    (lambda: [triton.InferInput("pixels", [1, 4, 4, 3], "UINT8")], "INVALID_ARGUMENT",
     "unexpected inference input 'pixels'"),
    (lambda: [], "INVALID_ARGUMENT", "the request has no inputs"),
])
def test_bad_inputs_get_clear_errors(tc, build, code, message):
    inputs = build()
    for tensor in inputs:
        dtype = np.uint8 if tensor.datatype() == "UINT8" else np.float32
        tensor.set_data_from_numpy(np.zeros(tensor.shape(), dtype))
    with pytest.raises(InferenceServerException) as info:
        tc.infer("tiny", inputs)
    assert info.value.status() == f"StatusCode.{code}" and message in info.value.message()
    assert tc.infer("tiny", [uint8_input(random_image(0, 32, 32)[None])]).as_numpy("logits").shape == (1, 5)


def test_binary_data_output_is_accepted_and_ignored(server):
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 4, 4, 3])
    request.raw_input_contents.append(bytes(48))
    request.parameters["binary_data_output"].bool_param = True
    output = request.outputs.add(name="top_k_scores")
    output.parameters["binary_data"].bool_param = True
    with grpc.insecure_channel(server.address) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert [o.name for o in reply.outputs] == ["top_k_scores"] and len(reply.raw_output_contents) == 1


def test_a_byte_count_mismatch(server):
    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 4, 4, 3])
    request.raw_input_contents.append(bytes(47))
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unexpected total byte size 47 for input 'images', expecting 48" in info.value.details()


def test_an_unknown_output_and_an_unknown_model(tc):
    image = [uint8_input(random_image(0, 32, 32)[None])]
    with pytest.raises(InferenceServerException) as info:
        tc.infer("tiny", image, outputs=[triton.InferRequestedOutput("boxes")])
    assert "unexpected inference output 'boxes' for model 'tiny'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        tc.infer("nope", image)
    assert info.value.status() == "StatusCode.NOT_FOUND" and "'nope'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        tc.get_model_metadata("nope")
    assert "'nope'" in info.value.message()


def test_timeout_and_a_full_queue_as_triton_reports_them(tiny_repo):
    with RunningServer(repo=str(tiny_repo), max_batch_size=4, max_queue_size=4,
                       max_queue_delay_us=1_000_000) as server:
        tc = triton.InferenceServerClient(server.address)
        image = [uint8_input(random_image(0, 32, 32)[None])]
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as info:
            tc.infer("tiny", image, timeout=200_000)  # the protocol's "timeout" parameter, in microseconds
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert time.monotonic() - started < 0.9

        three = [uint8_input(np.stack([random_image(1, 32, 32)] * 3))]
        holder = threading.Thread(target=lambda: tc.infer("tiny", three))
        holder.start()
        with Client(server.address) as native:
            wait_for_queue_depth(native, "tiny", 3)  # three images wait for a fourth (or the delay)
        with pytest.raises(InferenceServerException) as info:
            tc.infer("tiny", [uint8_input(np.stack([random_image(2, 32, 32)] * 2))], priority=1)
        holder.join(10)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert info.value.message().startswith("Exceeds maximum queue size")


def test_server_reflection_lists_the_protocol(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")]
        answers = list(stub.ServerReflectionInfo(iter(asks), timeout=10))
    assert "inference.GRPCInferenceService" in {s.name for s in answers[0].list_services_response.service}
    assert answers[1].file_descriptor_response.file_descriptor_proto
