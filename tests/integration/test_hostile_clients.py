"""Hostile and careless clients: fuzzed requests and images, bombs, slow readers.

The fuzzed server runs as a real `framewire serve` process; every request must
get a status code (never UNKNOWN or INTERNAL, never a crash), the server's
memory must stay under the limit set here, and a good request must work
afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import io
import queue
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framewire.client import Client, FramewireError
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc
from support.images import encode, png_claiming, random_image
from support.server import RunningServer, ServerProcess
from support.waiting import model_status, wait_until

#: Codes a well-behaved server may answer a hostile request with.
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
MEMORY_LIMIT_BYTES = 3 * 2**30
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def target(tiny_repo):
    server = ServerProcess("--repo", str(tiny_repo), "--device", "cpu", "--max-image-pixels", "4000000",
                           "--max-message-bytes", str(8 * 2**20), "--max-images-per-request", "32",
                           "--instances-per-device", "1")
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    try:
        yield server, inference_pb2_grpc.ModelInferenceStub(channel), channel
    finally:
        channel.close()
        server.close()


def code_of(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=60)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def peak_memory(pid: int) -> int:
    """High-water resident memory of a process and its children (bytes)."""
    total = 0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_images(target, data):
    _, stub, _ = target
    assert code_of(stub.Predict, pb.PredictRequest(model="tiny", image=pb.Image(encoded=data))) in ACCEPTABLE


tensors = st.builds(
    lambda dtype, shape, data: pb.Image(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data)),
    st.sampled_from([0, 1, 2, 3, 4, 5, 99]),
    st.lists(st.integers(min_value=-3, max_value=2**40), max_size=5),
    st.binary(max_size=2048),
)
images = st.one_of(st.builds(lambda b: pb.Image(encoded=b), st.binary(max_size=1024)), tensors, st.just(pb.Image()))
options = st.builds(
    lambda k, raw, threshold, most: pb.PredictOptions(top_k=k, return_raw=raw, score_threshold=threshold,
                                                      max_detections=most),
    st.integers(0, 2**32 - 1), st.booleans(), st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(0, 2**32 - 1),
)
models = st.one_of(st.just("tiny"), st.text(max_size=40))


@FUZZ
@given(model=models, version=st.integers(0, 2**64 - 1), image=images, opts=options)
def test_random_predict_requests(target, model, version, image, opts):
    _, stub, _ = target
    request = pb.PredictRequest(model=model, version=version, image=image, options=opts)
    assert code_of(stub.Predict, request) in ACCEPTABLE


@FUZZ
@given(model=models, batch=st.lists(images, max_size=40), opts=options)
def test_random_batch_requests(target, model, batch, opts):
    _, stub, _ = target
    request = pb.BatchPredictRequest(model=model, images=batch, options=opts)
    assert code_of(stub.BatchPredict, request) in ACCEPTABLE


@FUZZ
@given(payload=st.binary(max_size=2048))
def test_random_bytes_as_a_message(target, payload):
    _, _, channel = target
    raw = channel.unary_unary("/framewire.v1.ModelInference/Predict",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        raw(payload, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() is not None  # gRPC's own answer to an unparseable message


def malformed_images() -> list[tuple[str, bytes]]:
    """Truncated, corrupted and bomb images of every accepted format, and some others."""
    from PIL import Image

    base = random_image(7, 60, 80)
    corpus = []
    for fmt, params in (("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 80}), ("BMP", {})):
        good = encode(base, fmt, **params)
        for cut in (1, 8, 16, 33, len(good) // 2, len(good) - 1):
            corpus.append((f"{fmt} cut at {cut}", good[:cut]))
        rng = np.random.default_rng(len(good))
        for flip in range(6):
            broken = bytearray(good)
            for at in rng.integers(0, len(good), size=8):
                broken[at] ^= 0xFF
            corpus.append((f"{fmt} flipped #{flip}", bytes(broken)))
    corpus.append(("PNG claiming 100000x100000", png_claiming(100000, 100000)))
    corpus.append(("PNG claiming 70000x1", png_claiming(70000, 1)))
    zeros = io.BytesIO()
    Image.new("L", (6000, 6000)).save(zeros, format="PNG")  # 36 megapixels in a few KB
    corpus.append(("6000x6000 zero PNG bomb", zeros.getvalue()))
    bmp = bytearray(encode(random_image(1, 4, 4), "BMP"))
    bmp[18:22] = (60000).to_bytes(4, "little")
    bmp[22:26] = (60000).to_bytes(4, "little")
    corpus.append(("BMP header claiming 60000x60000", bytes(bmp)))
    jpeg = bytearray(encode(base, "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = (65000).to_bytes(2, "big") + (65000).to_bytes(2, "big")
    corpus.append(("JPEG frame header claiming 65000x65000", bytes(jpeg)))
    for fmt in ("GIF", "TIFF", "ICO"):
        corpus.append((f"{fmt} (not accepted)", encode(random_image(2, 16, 16), fmt)))
    corpus.append(("16-bit PNG", encode(np.full((20, 20), 40000, np.uint16))))
    cmyk = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(cmyk, format="JPEG")
    corpus.append(("CMYK JPEG", cmyk.getvalue()))
    palette = io.BytesIO()
    Image.fromarray(base).convert("P").save(palette, format="PNG")
    corpus.append(("palette PNG", palette.getvalue()))
    return corpus


def test_malformed_truncated_and_bomb_images_get_a_status_and_stay_in_memory(target):
    server, stub, _ = target
    answers = {}
    for name, data in malformed_images():
        answers[name] = code_of(stub.Predict, pb.PredictRequest(model="tiny", image=pb.Image(encoded=data)))
    assert set(answers.values()) <= ACCEPTABLE, answers
    for bomb in ("PNG claiming 100000x100000", "6000x6000 zero PNG bomb", "BMP header claiming 60000x60000",
                 "JPEG frame header claiming 65000x65000"):
        assert answers[bomb] == grpc.StatusCode.INVALID_ARGUMENT, bomb
    for fine in ("CMYK JPEG", "palette PNG", "16-bit PNG"):
        assert answers[fine] == grpc.StatusCode.OK, fine
    assert peak_memory(server.proc.pid) < MEMORY_LIMIT_BYTES


def test_the_fuzzed_server_still_serves(target):
    server, stub, _ = target
    reply = stub.Predict(pb.PredictRequest(model="tiny", image=pb.Image(encoded=encode(random_image(3)))), timeout=60)
    assert reply.prediction.classification.classes
    assert server.proc.poll() is None
    assert peak_memory(server.proc.pid) < MEMORY_LIMIT_BYTES


def test_streams_that_stop_reading_do_not_stall_other_clients(tiny_repo):
    frame = pb.Image(encoded=encode(random_image(5)))
    with RunningServer(repo=str(tiny_repo), max_stream_in_flight=8, max_queue_delay_us=1000) as server:
        stop = threading.Event()
        channels, calls = [], []

        def frames(stream_id):
            number = 0
            while not stop.is_set():
                yield pb.StreamFrame(stream_id=stream_id, frame_number=number, image=frame,
                                     model="tiny" if number == 0 else "")
                number += 1

        for i in range(12):  # each on its own connection, none ever reading
            channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            calls.append(inference_pb2_grpc.ModelInferenceStub(channel).StreamPredict(frames(f"slow{i}")))
        try:
            with Client(server.address, retries=0) as c:
                def hogging() -> bool:
                    """Every slow stream is open and, on average, has had its in-flight
                    allowance answered: they are all pushing frames nobody reads."""
                    return (server.server.streams.open_streams == 12
                            and model_status(c, "tiny").inference_count >= 12 * 8)

                wait_until(hogging, 60, "the 12 slow streams to be open and answered", interval=0.1)
            started = time.monotonic()
            with Client(server.address, retries=0, timeout=20) as c, cf.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda i: c.predict(encode(random_image(i)), model="tiny"), range(20)))
            assert len(answers) == 20 and time.monotonic() - started < 15
        finally:
            stop.set()
            for call in calls:
                call.cancel()
            for channel in channels:
                channel.close()


@pytest.fixture(scope="module")
def limited(tiny_repo):
    """A server with small limits on streams, tensors and calls in flight."""
    with RunningServer(repo=str(tiny_repo), max_streams_per_connection=3, max_tensor_elements=1000,
                       max_concurrent_rpcs=100) as server:
        yield server


def test_one_connection_may_hold_only_so_many_streams(limited):
    channel = grpc.insecure_channel(limited.address)
    stub = inference_pb2_grpc.ModelInferenceStub(channel)
    feeds, calls = [], []
    image = pb.Image(encoded=encode(random_image(6)))
    try:
        for i in range(4):
            feed: queue.Queue = queue.Queue()
            feed.put(pb.StreamFrame(stream_id=f"c{i}", frame_number=0, image=image, model="tiny"))
            feeds.append(feed)
            calls.append(stub.StreamPredict(iter(feed.get, None)))
            if i < 3:  # open one after another: the server takes up concurrent calls in any order
                assert next(calls[i]).status.code == 0
        with pytest.raises(grpc.RpcError) as info:
            next(calls[3])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams-per-connection" in info.value.details()
    finally:
        for feed in feeds:
            feed.put(None)
        channel.close()


def test_tensor_element_limit(limited):
    with Client(limited.address, retries=0) as c, pytest.raises(FramewireError) as info:
        c.predict(np.zeros((40, 40, 3), np.uint8), model="tiny")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 1000" in info.value.message


@pytest.fixture(scope="module")
def holding(tiny_repo):
    """A server that holds each call up to a second for its batch to fill (batches
    of up to 128), so that calls pile up past --max-concurrent-rpcs however fast
    the model answers."""
    held = {"max_batch_size": 128, "max_queue_size": 1024, "max_queue_delay_us": 1_000_000}
    with RunningServer(repo=str(tiny_repo), max_concurrent_rpcs=100, model_overrides={"tiny": held}) as server:
        yield server


def test_3000_concurrent_calls_get_answers_or_a_retryable_refusal_never_cancelled(holding):
    """Past --max-concurrent-rpcs a call is refused at once with UNAVAILABLE (which
    clients retry); none is CANCELLED by gRPC's queue of calls not yet taken up;
    health checks are never refused."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    limited = holding

    request = pb.PredictRequest(model="tiny", image=pb.Image(encoded=encode(random_image(5, 16, 16))))

    async def flood() -> tuple[list, list]:
        async with grpc.aio.insecure_channel(limited.address) as channel:
            stub = inference_pb2_grpc.ModelInferenceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def one(i: int):
                try:
                    await stub.Predict(request, timeout=120)
                    return grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details()

            async def probe():
                answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=120)
                return answer.status

            calls = [one(i) for i in range(3000)]
            probes = [probe() for _ in range(20)]
            answers = await asyncio.gather(*calls, *probes)
            return answers[:3000], answers[3000:]

    answers, probes = asyncio.run(flood())
    codes = collections.Counter(code for code, _ in answers)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes[grpc.StatusCode.OK] > 0 and codes[grpc.StatusCode.UNAVAILABLE] > 0, codes
    refusal = next(details for code, details in answers if code == grpc.StatusCode.UNAVAILABLE)
    assert "its limit (--max-concurrent-rpcs); retry with backoff" in refusal or "queue of model" in refusal
    assert set(probes) == {health_pb2.HealthCheckResponse.SERVING}
    with Client(limited.address, retries=0) as c:  # and it goes on serving
        assert c.predict(encode(random_image(6)), model="tiny").version == 1


def test_deadlines_that_pass_while_a_call_is_answered_log_no_error(tmp_path, caplog):
    """Calls whose deadline passes while the server is still working on them:
    each ends DEADLINE_EXCEEDED, and the server neither logs 'unexpected
    error' nor trips over answering a call that has ended."""
    import logging

    from support.artifacts import export_tiny

    caplog.set_level(logging.INFO)
    export_tiny(tmp_path, "slow", 1, size=224)  # a 1080p PNG to decode and resize per call
    image = encode(random_image(3, 1080, 1920))
    with RunningServer(repo=str(tmp_path), runner="thread") as server, grpc.insecure_channel(server.address) as ch:
        stub = inference_pb2_grpc.ModelInferenceStub(ch)
        request = pb.PredictRequest(model="slow", image=pb.Image(encoded=image))
        calls = [stub.Predict.future(request, timeout=0.005 * (1 + i % 20)) for i in range(120)]
        codes = collections.Counter(code_of(lambda _, timeout, call=call: call.result(timeout), None) for call in calls)
        assert codes[grpc.StatusCode.DEADLINE_EXCEEDED] > 0, codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        stub.Predict(request, timeout=60)  # and it goes on serving
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, problems[:3]
