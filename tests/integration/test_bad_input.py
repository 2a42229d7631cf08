"""Bad input: each gets its precise status and message, and the server keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from framewire.client import FramewireError
from framewire.v1 import artifact_pb2 as apb
from framewire.v1 import inference_pb2 as pb
from support.images import encode, png_claiming, random_image

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def raw(stub_method, request):
    try:
        stub_method(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    raise AssertionError("the call succeeded")


@pytest.fixture
def stub(client):
    return client.stub


@pytest.fixture(autouse=True)
def still_serving(client):
    yield
    assert client.predict(encode(random_image(0)), model="tiny").classes  # the server still answers


def tensor_image(dtype, shape, data) -> pb.Image:
    return pb.Image(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data))


def predict(model="tiny", image=None, version=0):
    return pb.PredictRequest(model=model, version=version, image=image or pb.Image(encoded=encode(random_image(1))))


def test_a_corrupt_jpeg(stub, chelsea_jpeg):
    code, message = raw(stub.Predict, predict(image=pb.Image(encoded=chelsea_jpeg[: len(chelsea_jpeg) // 3])))
    assert code == INVALID and "corrupt or truncated" in message
    garbage = b"\xff\xd8\xff\xe0" + bytes(range(200))
    code, message = raw(stub.Predict, predict(image=pb.Image(encoded=garbage)))
    assert code == INVALID and "not a readable JPEG, PNG, WebP or BMP" in message


def test_a_zero_byte_image(stub):
    code, message = raw(stub.Predict, predict(image=pb.Image(encoded=b"")))
    assert code == INVALID and "image is empty" in message


def test_an_image_with_no_data_at_all(stub):
    code, message = raw(stub.Predict, predict(image=pb.Image()))
    assert code == INVALID and "image is empty; set `encoded`" in message


def test_a_png_claiming_100000_by_100000_pixels(stub):
    code, message = raw(stub.Predict, predict(image=pb.Image(encoded=png_claiming(100000, 100000))))
    assert code == INVALID
    assert "100000x100000 pixels" in message and "--max-image-pixels" in message


def test_a_tensor_whose_byte_count_disagrees_with_its_shape(stub):
    image = tensor_image(apb.DATA_TYPE_UINT8, [10, 10, 3], bytes(299))
    code, message = raw(stub.Predict, predict(image=image))
    assert code == INVALID and "needs 300 bytes but 299 were sent" in message


def test_a_float_tensor_of_the_wrong_size(stub):
    data = np.zeros((3, 20, 20), np.float32).tobytes()
    code, message = raw(stub.Predict, predict(image=tensor_image(apb.DATA_TYPE_FLOAT32, [3, 20, 20], data)))
    assert code == INVALID and "float tensor is [3, 20, 20]; model tiny takes [3, 32, 32]" in message


def test_a_tensor_of_an_unaccepted_dtype(stub):
    code, message = raw(stub.Predict, predict(image=tensor_image(apb.DATA_TYPE_INT64, [2, 2, 3], bytes(96))))
    assert code == INVALID and "DATA_TYPE_INT64 is not accepted" in message


def test_a_uint8_tensor_that_is_not_rgb(stub):
    code, message = raw(stub.Predict, predict(image=tensor_image(apb.DATA_TYPE_UINT8, [4, 4], bytes(16))))
    assert code == INVALID and "[H, W, 3]" in message


def test_an_unknown_model(stub):
    code, message = raw(stub.Predict, predict(model="no_such_model"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'no_such_model' is not served here" in message and "tiny" in message


def test_an_unknown_version(stub):
    code, message = raw(stub.Predict, predict(version=42))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no version 42" in message and "1 READY" in message


def test_an_empty_batch(stub):
    code, message = raw(stub.BatchPredict, pb.BatchPredictRequest(model="tiny"))
    assert code == INVALID and "holds no images" in message


def test_too_many_images(stub):
    image = pb.Image(encoded=encode(random_image(2, 8, 8)))
    code, message = raw(stub.BatchPredict, pb.BatchPredictRequest(model="tiny", images=[image] * 17))
    assert code == INVALID and "17 images; the limit is 16" in message


def test_a_bad_image_in_a_batch_names_its_index(stub):
    good = pb.Image(encoded=encode(random_image(2)))
    code, message = raw(stub.BatchPredict, pb.BatchPredictRequest(model="tiny", images=[good, pb.Image(), good]))
    assert code == INVALID and message.startswith("images[1]")


def test_a_message_over_the_size_limit(stub):
    big = pb.Image(encoded=b"\xff" * (5 * 1024 * 1024))
    code, message = raw(stub.Predict, predict(image=big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in message


def test_a_top_k_that_is_too_large(stub):
    request = predict()
    request.options.top_k = 5000
    code, message = raw(stub.Predict, request)
    assert code == INVALID and "top_k=5000" in message


def test_the_client_raises_a_typed_error(client):
    with pytest.raises(FramewireError) as info:
        client.predict(b"", model="tiny")
    assert info.value.code == INVALID and info.value.request_id


def test_client_strings_are_bounded_in_requests_and_in_the_log(server, stub, caplog):
    """A 3 MiB model name (or version, stream id) is INVALID_ARGUMENT with a short
    message, and the log does not grow by anything like it."""
    import logging

    from framewire.oip import grpc_service_pb2 as oip
    from framewire.oip import grpc_service_pb2_grpc

    caplog.set_level(logging.INFO)
    huge = "m" * (3 * 1024 * 1024)
    code, message = raw(stub.Predict, predict(model=huge))
    assert code == INVALID and "is not a model name: at most 128 characters" in message and len(message) < 400
    code, message = raw(stub.GetModel, pb.GetModelRequest(model="tiny" + "!" * 10))
    assert code == INVALID and "is not a model name" in message

    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 * 2**20)]) as channel:
        protocol = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request in (oip.ModelInferRequest(model_name=huge),
                        oip.ModelInferRequest(model_name="tiny", model_version="1" * 100_000)):
            code, message = raw(protocol.ModelInfer, request)
            assert code == INVALID and len(message) < 400, message
        code, message = raw(protocol.RepositoryModelLoad, oip.RepositoryModelLoadRequest(model_name=huge))
        assert code == INVALID and len(message) < 400

    image = pb.Image(encoded=encode(random_image(1)))
    frames = [pb.StreamFrame(stream_id="s" * 100_000, frame_number=0, model="tiny", image=image),
              pb.StreamFrame(stream_id="cam", frame_number=0, model="tiny", image=image)]
    answers = list(stub.StreamPredict(iter(frames), timeout=60))
    by_id = {a.stream_id[:3]: a for a in answers}
    assert by_id["sss"].status.code == INVALID.value[0] and "stream id" in by_id["sss"].status.message
    assert len(by_id["sss"].stream_id) <= 128
    assert by_id["cam"].status.code == 0
    assert sum(len(r.getMessage()) for r in caplog.records) < 20_000


def test_a_shape_whose_element_count_overflows(server, stub):
    from framewire.oip import grpc_service_pb2 as oip
    from framewire.oip import grpc_service_pb2_grpc

    code, message = raw(stub.Predict, predict(image=tensor_image(apb.DATA_TYPE_UINT8, [2**32, 2**32, 3], b"")))
    assert code == INVALID and "has 55340232221128654848 elements; the limit is" in message
    with grpc.insecure_channel(server.address) as channel:
        request = oip.ModelInferRequest(model_name="tiny", raw_input_contents=[b""])
        request.inputs.add(name="images", datatype="UINT8", shape=[1, 2**32, 2**32, 3])
        code, message = raw(grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request)
    assert code == INVALID and "has 55340232221128654848 elements; the limit is" in message


def protocol_request(**parameters):
    from framewire.oip import grpc_service_pb2 as oip

    request = oip.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="encoded_images", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        encode(random_image(4)))
    for name, (kind, value) in parameters.items():
        setattr(request.parameters[name], kind, value)
    return request


@pytest.mark.parametrize("parameters, says", [
    ({"top_k": ("string_param", "abc")}, "parameter top_k must be a whole number; got the string 'abc'"),
    ({"top_k": ("double_param", float("inf"))}, "parameter top_k must be a whole number; got inf"),
    ({"top_k": ("int64_param", 5000)}, "top_k=5000 is too large; at most 1000"),
    ({"top_k": ("int64_param", -1)}, "parameter top_k must be 0 or more; got -1"),
    ({"timeout": ("string_param", "x")}, "parameter timeout must be a whole number; got the string 'x'"),
    ({"score_threshold": ("string_param", "x")}, "parameter score_threshold must be a number; got the string 'x'"),
    ({"score_threshold": ("double_param", float("nan"))}, "score_threshold=nan must be within [0, 1]"),
    ({"max_detections": ("bool_param", True)}, "parameter max_detections must be a whole number; got True"),
    ({"priority": ("double_param", 1.5)}, "parameter priority must be a whole number; got 1.5"),
])
def test_protocol_parameters_of_the_wrong_type_or_range(server, caplog, parameters, says):
    """Checked exactly as the native API checks its options: INVALID_ARGUMENT, no traceback."""
    import logging

    from framewire.oip import grpc_service_pb2_grpc

    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(server.address) as channel:
        code, message = raw(grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer,
                            protocol_request(**parameters))
    assert code == INVALID and says in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("method, message_type", [
    ("/framewire.v1.ModelInference/Predict", "framewire.v1.PredictRequest"),
    ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
    ("/framewire.v1.ModelInference/StreamPredict", "framewire.v1.StreamFrame"),
])
def test_malformed_protobuf_bytes(server, method, message_type):
    with grpc.insecure_channel(server.address) as channel:
        if "Stream" in method:
            call = channel.stream_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as info:
                list(call(iter([b"\xff\xff\xff\xff"]), timeout=30))
            code, message = info.value.code(), info.value.details()
        else:
            call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            code, message = raw(call, b"\xff\xff\xff\xff")
    assert code == INVALID, message
    assert f"the request is not a valid {message_type} message" in message


def test_an_image_over_the_clients_message_limit_names_both_limits_and_is_not_sent(server):
    from framewire.client import Client

    with Client(server.address, retries=0) as c, pytest.raises(FramewireError) as info:
        c.predict(b"\xff\xd8" + b"\x00" * 72_000_000, model="tiny")
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = info.value.message
    assert message.startswith("the request is 72,000,0") and "over this client's message limit of 67,108,864" in message
    assert "--max-message-bytes of framewire predict, score and stream" in message and "framewire serve --max-message-bytes" in message
    assert "--max-image-bytes" in message and "resize" in message


def test_an_image_over_the_servers_message_limit_names_its_flag(client):
    with pytest.raises(FramewireError) as info:
        client.predict(b"\xff" * (5 * 1024 * 1024), model="tiny")
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.message.startswith("the request is 5,242,")
    assert "over the server's message limit of 4,194,304 (its --max-message-bytes)" in info.value.message
