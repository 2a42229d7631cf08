"""Talking to a model worker process, without pickle.

Messages are length-prefixed: a JSON header, then an optional binary
payload, over any pair of byte streams (today a worker's stdin/stdout).
Requests carry an `id` their reply repeats, so several may be in flight on
one connection. Image batches travel through shared memory buffers, one per
in-flight slot of a connection (a file under /dev/shm, mapped by both
processes and unlinked as soon as the worker has mapped it, so nothing
leaks if either side dies); messages carry offsets into them.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import struct
import tempfile
import threading
from concurrent.futures import Future
from typing import BinaryIO

_LENGTHS = struct.Struct("<II")
#: Refuse absurd frames from a confused peer.
MAX_HEADER_BYTES = 16 * 1024 * 1024


class WorkerGone(Exception):
    """The other end closed the pipe (the worker exited or crashed)."""


def write_message(stream: BinaryIO, header: dict, payload: bytes | memoryview = b"") -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    stream.write(_LENGTHS.pack(len(raw), len(payload)))
    stream.write(raw)
    if payload:
        stream.write(payload)
    stream.flush()


def read_message(stream: BinaryIO) -> tuple[dict, bytes]:
    """The next (header, payload); WorkerGone at end of stream."""
    lengths = _read_exactly(stream, _LENGTHS.size)
    header_len, payload_len = _LENGTHS.unpack(lengths)
    if header_len > MAX_HEADER_BYTES:
        raise WorkerGone(f"malformed frame header ({header_len} bytes)")
    header = json.loads(_read_exactly(stream, header_len))
    payload = _read_exactly(stream, payload_len) if payload_len else b""
    return header, payload


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise WorkerGone("the model worker closed its pipe")
    return data


class SharedBuffer:
    """A shared memory buffer the front-end writes batches into."""

    def __init__(self, size: int):
        self.size = max(size, mmap.PAGESIZE)
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(prefix="framewire-batch-", dir=directory)
        try:
            os.ftruncate(fd, self.size)
            self.map = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)

    def unlink(self) -> None:
        """Remove the name once the worker has mapped it (idempotent)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.unlink()
        self.map.close()


def map_buffer(path: str, size: int) -> mmap.mmap:
    """The worker's view of a SharedBuffer."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class Connection:
    """The front end's side of one worker connection: requests by id, and a
    reader thread that hands each reply to the request that asked for it.
    When the other end goes away every pending and later request fails with
    WorkerGone."""

    def __init__(self, inp: BinaryIO, out: BinaryIO, name: str = "worker"):
        self._inp = inp
        self._out = out
        self._ids = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._gone: WorkerGone | None = None
        self._reader = threading.Thread(target=self._read_replies, name=f"{name}-replies", daemon=True)
        self._reader.start()

    def request(self, header: dict, payload: bytes = b"") -> Future:
        """Send a request; the future resolves to its reply (header, payload)."""
        future: Future = Future()
        with self._lock:
            if self._gone is not None:
                future.set_exception(self._gone)
                return future
            request_id = next(self._ids)
            self._pending[request_id] = future
            try:
                write_message(self._out, {**header, "id": request_id}, payload)
            except (OSError, ValueError) as exc:
                self._pending.pop(request_id, None)
                future.set_exception(WorkerGone(f"the model worker's pipe is closed ({exc})"))
        return future

    def send(self, header: dict) -> None:
        """A message that has no reply (stop)."""
        with self._lock:
            write_message(self._out, header)

    def _read_replies(self) -> None:
        try:
            while True:
                header, payload = read_message(self._inp)
                with self._lock:
                    future = self._pending.pop(header.get("id"), None)
                if future is not None:
                    future.set_result((header, payload))
        except (WorkerGone, OSError, ValueError) as exc:
            gone = exc if isinstance(exc, WorkerGone) else WorkerGone(str(exc))
            with self._lock:
                self._gone = gone
                pending, self._pending = list(self._pending.values()), {}
            for future in pending:
                future.set_exception(gone)

    @property
    def alive(self) -> bool:
        return self._gone is None

    def join(self, timeout: float | None = None) -> None:
        self._reader.join(timeout)
