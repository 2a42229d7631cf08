"""A worker in listen mode (FRAMEWIRE_WORKER_SOCKET): several connections,
one loaded model per artifact shared under each connection's own ids, a
connection that closes leaves the others serving, and sub-batches of one
model from several connections merged into one forward pass."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from framewire.service.device_workers import WORKER_COMMAND
from framewire.service.ipc import FRONT_END_PID, WORKER_SOCKET, Connection, SharedBuffer
from framewire.service.payloads import Payload, pack, packed_size
from framewire.service.worker_settings import WorkerSettings
from support.images import encode, random_image
from support.processes import kill_and_wait
from support.waiting import wait_until

TIMEOUT = 60


@pytest.fixture
def worker():
    """A worker listening on a socket in a short temporary directory (a Unix
    socket's path is limited to about 100 bytes; pytest's tmp_path is long)."""
    directory = tempfile.mkdtemp(prefix="fw-")
    path = os.path.join(directory, "worker.sock")
    Path(path).write_bytes(b"")  # a stale file from an earlier worker is replaced
    proc = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.DEVNULL,
                            env={**os.environ, WORKER_SOCKET: path, FRONT_END_PID: str(os.getpid())})
    try:
        yield Worker(proc, path)
    finally:
        if proc.poll() is None:
            kill_and_wait(proc.pid)
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


class Worker:
    def __init__(self, proc, path: str):
        self.proc = proc
        self.path = path

    def connect(self) -> "Peer":
        def connected():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                return None
            return sock

        return Peer(wait_until(connected, 30, f"the worker to listen on {self.path}"))


class Peer:
    """A front end's side of one connection, driving the worker the way worker_runner does."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.connection = Connection(sock.makefile("rb"), sock.makefile("wb"), name="test")
        self.buffers: list[SharedBuffer] = []

    def ask(self, header: dict) -> tuple[dict, bytes]:
        return self.connection.request(header).result(TIMEOUT)

    def load(self, model_id: str, artifact: Path, **settings) -> dict:
        reply, _ = self.ask({"op": "load", "settings": WorkerSettings(model_id=model_id, artifact=str(artifact),
                                                                     **settings).to_json()})
        assert reply["op"] == "loaded", reply
        return reply

    def stage(self, model_id: str, slot: int, payloads: list) -> dict:
        """Write a batch into a fresh shared-memory slot the worker maps; its layout."""
        buffer = SharedBuffer(packed_size(payloads))
        self.buffers.append(buffer)
        try:
            reply, _ = self.ask({"op": "buffer", "model": model_id, "slot": slot, "path": buffer.path,
                                 "size": buffer.size})
            assert reply["op"] == "buffer_ok", reply
        finally:
            buffer.unlink()
        return pack(payloads, buffer.map)

    def run(self, model_id: str, slot: int, layout: dict, max_rows: int | None = None):
        header = {"op": "run", "model": model_id, "slot": slot, "batch": layout}
        if max_rows is not None:
            header["max_rows"] = max_rows
        return self.connection.request(header)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.connection.join(10)
        for buffer in self.buffers:
            buffer.close()


def logits(reply: dict, payload: bytes) -> np.ndarray:
    assert reply["op"] == "done", reply
    return np.frombuffer(payload, np.float32).reshape(reply["output"]["shape"])


def images(seed: int) -> list[Payload]:
    first, second = random_image(seed), random_image(seed + 1)
    return [Payload("uint8", first, *first.shape[:2]), Payload("encoded", encode(second), *second.shape[:2], "PNG")]


def test_two_connections_share_one_model_under_their_own_ids(worker, tiny_repo):
    artifact = tiny_repo / "tiny" / "1" / "model.fwa"
    a, b = worker.connect(), worker.connect()
    for peer in (a, b):
        assert peer.ask({"op": "hello"})[0] == {"op": "hello_ok", "id": 1, "pid": worker.proc.pid}
    first = a.load("tiny:1#1", artifact)
    second = b.load("tiny:1#7", artifact)
    assert (first["shared"], second["shared"]) == (False, True)
    assert {k: second[k] for k in ("model", "task", "dtype", "device")} == {
        "model": "tiny:1#7", "task": "classification", "dtype": "float32", "device": "cpu"}
    assert {k: first[k] for k in ("task", "dtype", "device")} == {k: second[k] for k in ("task", "dtype", "device")}
    # Other settings are another model, loaded on its own.
    assert b.load("tiny:1#8", artifact, channels_last=False)["shared"] is False

    warmed = a.ask({"op": "warm", "model": "tiny:1#1", "sizes": [1, 2]})[0]
    assert warmed["op"] == "warmed" and set(warmed["seconds"]) == {"1", "2"}
    again = b.ask({"op": "warm", "model": "tiny:1#7", "sizes": [2, 1, 3]})[0]
    # Sizes warmed already are not run again: the seconds measured then come back.
    assert again["op"] == "warmed" and {k: again["seconds"][k] for k in ("1", "2")} == warmed["seconds"]
    assert again["seconds"]["3"] > 0

    batch = images(0)
    out_a = logits(*a.run("tiny:1#1", 0, a.stage("tiny:1#1", 0, batch)).result(TIMEOUT))
    out_b = logits(*b.run("tiny:1#7", 3, b.stage("tiny:1#7", 3, batch)).result(TIMEOUT))
    np.testing.assert_array_equal(out_a, out_b)
    # A connection's ids and shared memory are its own.
    reply, _ = b.run("tiny:1#1", 3, {}).result(TIMEOUT)
    assert reply["op"] == "error" and "no model for this batch ('tiny:1#1'" in reply["message"]
    reply, _ = b.run("tiny:1#7", 0, {}).result(TIMEOUT)
    assert reply["op"] == "error" and "no shared memory slot" in reply["message"]

    # Unloaded by one connection, the model stays for the other.
    assert a.ask({"op": "unload", "model": "tiny:1#1"})[0]["op"] == "unloaded"
    reply, _ = a.run("tiny:1#1", 0, {}).result(TIMEOUT)
    assert reply["op"] == "error" and "no model" in reply["message"]
    np.testing.assert_array_equal(logits(*b.run("tiny:1#7", 3, b.stage("tiny:1#7", 3, batch)).result(TIMEOUT)), out_a)
    assert a.load("tiny:1#2", artifact)["shared"] is True
    # Unloaded by both, it is gone: the next load loads it again.
    for peer, model_id in ((a, "tiny:1#2"), (b, "tiny:1#7")):
        assert peer.ask({"op": "unload", "model": model_id})[0]["op"] == "unloaded"
    assert a.load("tiny:1#3", artifact)["shared"] is False
    a.close()
    b.close()


def test_two_connections_loading_one_artifact_at_once_load_it_once(worker, tiny_repo):
    artifact = tiny_repo / "tiny" / "1" / "model.fwa"
    a, b = worker.connect(), worker.connect()
    settings = [WorkerSettings(model_id=f"tiny:1#{n}", artifact=str(artifact)).to_json() for n in (1, 2)]
    futures = [peer.connection.request({"op": "load", "settings": s}) for peer, s in zip((a, b), settings)]
    replies = [f.result(TIMEOUT)[0] for f in futures]
    assert [r["op"] for r in replies] == ["loaded", "loaded"]
    assert sorted(r["shared"] for r in replies) == [False, True]
    a.close()
    b.close()


def test_a_model_is_shared_only_with_loads_of_the_same_bytes(worker, tmp_path):
    """The fingerprint holds the sha256 of the bytes loaded: a load that
    expects those bytes shares the model even after the file changed; a load
    that expects nothing reads the file, and new bytes are another model."""
    import hashlib

    from support.artifacts import export_tiny

    artifact = export_tiny(tmp_path, "tiny", 1, seed=1)
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    a, b = worker.connect(), worker.connect()
    assert a.load("tiny:1#1", artifact, expect_sha256=sha)["shared"] is False
    assert b.load("tiny:1#2", artifact)["shared"] is True  # no expectation: the same bytes on disk
    batch = images(4)
    before = logits(*a.run("tiny:1#1", 0, a.stage("tiny:1#1", 0, batch)).result(TIMEOUT))
    export_tiny(tmp_path, "tiny", 1, seed=2, overwrite=True)
    assert b.load("tiny:1#3", artifact, expect_sha256=sha)["shared"] is True
    np.testing.assert_array_equal(logits(*b.run("tiny:1#3", 0, b.stage("tiny:1#3", 0, batch)).result(TIMEOUT)),
                                  before)
    assert b.load("tiny:1#4", artifact)["shared"] is False
    after = logits(*b.run("tiny:1#4", 1, b.stage("tiny:1#4", 1, batch)).result(TIMEOUT))
    assert np.abs(after - before).max() > 1e-3
    reply, _ = a.ask({"op": "load", "settings": WorkerSettings(model_id="tiny:1#5", artifact=str(artifact),
                                                               expect_sha256="0" * 64).to_json()})
    assert reply["op"] == "failed" and reply["kind"] == "changed"
    a.close()
    b.close()


def test_a_connection_that_closes_or_stops_leaves_the_others_serving(worker, tiny_repo):
    artifact = tiny_repo / "tiny" / "1" / "model.fwa"
    a, b, c = worker.connect(), worker.connect(), worker.connect()
    a.load("tiny:1#1", artifact)
    assert b.load("tiny:1#1", artifact)["shared"] is True  # the same id on two connections: two aliases
    assert c.load("tiny:1#5", artifact)["shared"] is True
    layout = b.stage("tiny:1#1", 0, images(1))
    expected = logits(*b.run("tiny:1#1", 0, layout).result(TIMEOUT))

    b.connection.send({"op": "stop"})  # ends this connection only
    wait_until(lambda: not b.connection.alive, 10, "the worker to close the stopped connection")
    a.close()  # the front end's side closes
    assert worker.proc.poll() is None
    np.testing.assert_array_equal(logits(*c.run("tiny:1#5", 0, c.stage("tiny:1#5", 0, images(1))).result(TIMEOUT)),
                                  expected)
    # The closed connections' aliases are gone: once c unloads, nothing holds the model.
    assert c.ask({"op": "unload", "model": "tiny:1#5"})[0]["op"] == "unloaded"
    assert c.load("tiny:1#6", artifact)["shared"] is False
    # A new connection is served as the first ones were.
    d = worker.connect()
    assert d.ask({"op": "hello"})[0]["pid"] == worker.proc.pid
    c.close()
    d.close()


def test_a_reply_to_a_connection_that_closed_is_dropped_and_the_worker_goes_on(worker, tiny_repo):
    artifact = tiny_repo / "tiny" / "1" / "model.fwa"
    a, b = worker.connect(), worker.connect()
    a.load("tiny:1#1", artifact)
    b.load("tiny:1#2", artifact)
    rows = float_rows(40, seed=3)
    layouts = [a.stage("tiny:1#1", slot, rows) for slot in range(4)]
    for slot, layout in enumerate(layouts):
        a.run("tiny:1#1", slot, layout, max_rows=256)
    a.close()  # with its batches in flight: their replies have nowhere to go
    reply, payload = b.run("tiny:1#2", 0, b.stage("tiny:1#2", 0, rows), max_rows=256).result(TIMEOUT)
    assert logits(reply, payload).shape == (40, 5)
    assert worker.proc.poll() is None
    b.close()


def float_rows(count: int, seed: int) -> list[Payload]:
    """Preprocessed float32 images for the 32x32 tiny model: next to no
    preparation, so the forward passes dominate and batches pile up."""
    rng = np.random.default_rng(seed)
    return [Payload("float32", rng.standard_normal((3, 32, 32)).astype(np.float32), 32, 32) for _ in range(count)]


def test_sub_batches_from_two_connections_merge_into_one_forward_pass(worker, tiny_repo):
    artifact = tiny_repo / "tiny" / "1" / "model.fwa"
    a, b = worker.connect(), worker.connect()
    a.load("tiny:1#1", artifact)
    b.load("tiny:1#9", artifact)
    rows, slots = 24, 3
    staged = [(peer, model_id, slot, peer.stage(model_id, slot, float_rows(rows, seed=10 * i + slot)))
              for i, (peer, model_id) in enumerate(((a, "tiny:1#1"), (b, "tiny:1#9"))) for slot in range(slots)]

    def burst(max_rows):
        futures = [peer.run(model_id, slot, layout, max_rows) for peer, model_id, slot, layout in staged]
        return [f.result(TIMEOUT) for f in futures]

    # Alone, one at a time: the outputs every merge must reproduce.
    expected = []
    for peer, model_id, slot, layout in staged:
        reply, payload = peer.run(model_id, slot, layout).result(TIMEOUT)
        assert (reply["device_rows"], reply["merged"]) == (rows, 1)
        expected.append(logits(reply, payload))

    def check(replies, max_rows):
        for (reply, payload), want in zip(replies, expected):
            np.testing.assert_allclose(logits(reply, payload), want, rtol=1e-4, atol=1e-5)
            assert reply["rows"] == list(range(rows)) and reply["errors"] == {}
            assert reply["device_rows"] == rows * reply["merged"] <= max_rows
        return max(reply["merged"] for reply, _ in replies)

    # Batches pile up while the compute thread runs one: a burst merges them
    # (across connections once more merge than one connection has in flight).
    def merged_across():
        return check(burst(rows * 2 * slots), rows * 2 * slots) > slots

    wait_until(merged_across, 30, "a forward pass to run batches of both connections", interval=0)
    # max_rows caps the merge (here at two batches).
    seen = 0
    deadline = time.monotonic() + 20
    while seen < 2 and time.monotonic() < deadline:
        seen = max(seen, check(burst(rows * 2 + 1), rows * 2 + 1))
    assert seen == 2
    # Without max_rows nothing merges.
    for _ in range(3):
        replies = burst(None)
        check(replies, rows)
        assert all(reply["merged"] == 1 for reply, _ in replies)
    a.close()
    b.close()


def test_without_the_socket_variable_the_worker_serves_its_pipe_and_says_hello(tiny_repo):
    proc = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={k: v for k, v in os.environ.items() if k != WORKER_SOCKET})
    connection = Connection(proc.stdout, proc.stdin)
    try:
        assert connection.request({"op": "hello"}).result(TIMEOUT)[0] == {"op": "hello_ok", "id": 1, "pid": proc.pid}
        connection.send({"op": "stop"})
        assert proc.wait(30) == 0
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        if proc.poll() is None:
            kill_and_wait(proc.pid)
        proc.wait()
