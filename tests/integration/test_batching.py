"""Batching, deadlines, a full queue and cancellation, seen from a real client."""

from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import numpy as np
import pytest

from framewire.client import Client, FramewireError
from framewire.v1 import inference_pb2 as pb
from support.images import encode, random_image
from support.server import RunningServer
from support.waiting import wait_for_queue_depth


def tiny_stats(client) -> pb.ModelRuntimeStatus:
    return next(m for m in client.server_status().models if m.model == "tiny")


def test_concurrent_single_image_requests_form_batches(tiny_repo):
    with RunningServer(repo=str(tiny_repo), max_batch_size=16, max_queue_delay_us=50_000) as server:
        images = [encode(random_image(i)) for i in range(32)]

        def one(image):
            with Client(server.address, retries=0) as c:
                return c.predict(image, model="tiny")

        with cf.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, images))
        with Client(server.address) as c:
            stats = tiny_stats(c)
    sizes = [a.timing["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes
    assert stats.inference_count == 32 and stats.execution_count < 32
    assert stats.max_batch_size_seen == max(sizes)


@pytest.fixture(scope="module")
def slow_server(tiny_repo):
    """Batches wait up to 1.5 s to fill (max 64), so queued work is easy to observe."""
    with RunningServer(repo=str(tiny_repo), max_batch_size=64, max_queue_size=64,
                       max_queue_delay_us=1_500_000) as server:
        yield server


def test_a_deadline_that_passes_in_the_queue(slow_server):
    with Client(slow_server.address, retries=0) as c:
        before = tiny_stats(c).inference_count
        with pytest.raises(FramewireError) as info:
            c.predict(encode(random_image(1)), model="tiny", timeout=0.3)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for_queue_depth(c, "tiny", 0)
        # Dropped before its batch ran: the next request waits out the delay
        # alone, and only it is counted.
        answer = c.predict(encode(random_image(1)), model="tiny")
        assert answer.classes and answer.timing["batch_size"] == 1
        assert tiny_stats(c).inference_count == before + 1


def test_cancelled_requests_are_dropped(slow_server):
    with Client(slow_server.address, retries=0) as c:
        before = tiny_stats(c).inference_count
        request = pb.PredictRequest(model="tiny", image=pb.Image(encoded=encode(random_image(2))))
        future = c.stub.Predict.future(request, timeout=30)
        wait_for_queue_depth(c, "tiny", 1)
        future.cancel()
        wait_for_queue_depth(c, "tiny", 0)
        answer = c.predict(encode(random_image(2)), model="tiny")  # runs alone: the cancelled one left no trace
        assert answer.timing["batch_size"] == 1
        assert tiny_stats(c).inference_count == before + 1


def test_a_full_queue_is_refused_at_once_and_says_to_retry(tiny_repo):
    with RunningServer(repo=str(tiny_repo), max_batch_size=4, max_queue_size=4,
                       max_queue_delay_us=1_000_000) as server, Client(server.address, retries=0) as c:
        image = encode(random_image(3))
        with cf.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.batch_predict, [image] * 3, model="tiny")
            wait_for_queue_depth(c, "tiny", 3)
            start = time.monotonic()
            with pytest.raises(FramewireError) as info:
                c.batch_predict([image] * 2, model="tiny")
            assert time.monotonic() - start < 0.5  # refused at once, not after the delay
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "full (3 of 4 images waiting, 2 more asked); retry with backoff" in info.value.message
            assert len(waiting.result(timeout=10)) == 3


def test_the_client_retries_a_full_queue(tiny_repo):
    with RunningServer(repo=str(tiny_repo), max_batch_size=2, max_queue_size=2,
                       max_queue_delay_us=300_000) as server:
        image = encode(random_image(4))
        with Client(server.address, retries=6, backoff=0.1) as c, cf.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: c.predict(image, model="tiny"), range(6)))
        assert len(answers) == 6


def test_a_multi_image_request_spans_batches(tiny_repo):
    with RunningServer(repo=str(tiny_repo), max_batch_size=4, max_queue_delay_us=1000) as server, \
            Client(server.address, retries=0) as c:
        images = [encode(random_image(i)) for i in range(10)]
        batch = c.batch_predict(images, model="tiny", return_raw=True)
        singles = [c.predict(i, model="tiny", return_raw=True) for i in images]
        for got, want in zip(batch, singles):
            np.testing.assert_allclose(got.raw["logits"], want.raw["logits"], atol=1e-5)
        assert tiny_stats(c).max_batch_size_seen == 4


def test_a_corrupt_image_fails_only_its_own_request_in_a_shared_batch(tiny_repo):
    # A batch closes at exactly three images, so the three requests share one.
    with RunningServer(repo=str(tiny_repo), max_batch_size=3, max_queue_delay_us=60_000_000) as server:
        good = encode(random_image(1, 120, 160), "JPEG")
        images = [good, good[: len(good) // 2], encode(random_image(2), "JPEG")]

        def one(image):
            with Client(server.address, retries=0) as c:
                try:
                    return c.predict(image, model="tiny")
                except FramewireError as exc:
                    return exc

        with cf.ThreadPoolExecutor(3) as pool:
            first, corrupt, last = pool.map(one, images)
    assert isinstance(corrupt, FramewireError) and corrupt.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "JPEG data is corrupt or truncated" in str(corrupt)
    assert first.classes and last.classes
    assert first.timing["batch_size"] == last.timing["batch_size"] == 3
