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

import asyncio
import itertools
import json
import mmap
import os
import struct
import tempfile
import threading
from concurrent.futures import Future
from typing import Any, BinaryIO, Callable

_LENGTHS = struct.Struct("<II")
#: The environment variable that tells a worker its front end's pid (it exits once that process is gone).
FRONT_END_PID = "FRAMEWIRE_FRONT_END_PID"
#: The environment variable that puts a worker in listen mode: it serves
#: connections on a Unix socket at this path instead of its stdin/stdout.
WORKER_SOCKET = "FRAMEWIRE_WORKER_SOCKET"
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


class _ThreadWaiter:
    """A reply awaited by a thread: a concurrent Future of (header, payload)."""

    def __init__(self):
        self.future: Future = Future()

    def resolve(self, header: dict, payload: bytes) -> None:
        self.future.set_result((header, payload))

    def fail(self, error: BaseException) -> None:
        self.future.set_exception(error)


class _LoopWaiter:
    """A reply awaited on an event loop: `convert(header, payload)` runs on
    the reader thread and its value (or exception) resolves an asyncio
    future, with one hop to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, convert: Callable[[dict, bytes], Any] | None):
        self.loop = loop
        self.future = loop.create_future()
        self.convert = convert

    def resolve(self, header: dict, payload: bytes) -> None:
        try:
            value = self.convert(header, payload) if self.convert is not None else (header, payload)
        except BaseException as exc:  # the converter's error is the request's
            self.fail(exc)
            return
        self._settle(self.future.set_result, value)

    def fail(self, error: BaseException) -> None:
        self._settle(self.future.set_exception, error)

    def _settle(self, setter, value) -> None:
        def settle() -> None:
            if not self.future.done():  # the awaiting task may have been cancelled
                setter(value)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop has closed: nobody awaits this reply any more
            pass


class Connection:
    """The front end's side of one worker connection: requests by id, and a
    reader thread that hands each reply to the request that asked for it.
    `request` is for threads (a concurrent Future); `request_on_loop` is for
    the event loop's hot path: the request is written from the loop (headers
    only, payloads travel in shared memory) and the reply reaches the loop
    in one hop, already converted on the reader thread. When the other end
    goes away every pending and later request fails with WorkerGone."""

    def __init__(self, inp: BinaryIO, out: BinaryIO, name: str = "worker"):
        self._inp = inp
        self._out = out
        self._ids = itertools.count(1)
        self._pending: dict[int, _ThreadWaiter | _LoopWaiter] = {}
        self._lock = threading.Lock()
        self._gone: WorkerGone | None = None
        self._reader = threading.Thread(target=self._read_replies, name=f"{name}-replies", daemon=True)
        self._reader.start()

    def request(self, header: dict, payload: bytes = b"") -> Future:
        """Send a request; the future resolves to its reply (header, payload)."""
        waiter = _ThreadWaiter()
        self._send(waiter, header, payload)
        return waiter.future

    def request_on_loop(self, header: dict, convert: Callable[[dict, bytes], Any] | None = None) -> asyncio.Future:
        """From the running event loop: send a request; the asyncio future
        resolves to `convert(header, payload)` of its reply (run on the reader
        thread), or to the reply itself; WorkerGone when the worker goes."""
        waiter = _LoopWaiter(asyncio.get_running_loop(), convert)
        self._send(waiter, header, b"")
        return waiter.future

    def _send(self, waiter, header: dict, payload: bytes) -> None:
        with self._lock:
            if self._gone is not None:
                waiter.fail(self._gone)
                return
            request_id = next(self._ids)
            self._pending[request_id] = waiter
            try:
                write_message(self._out, {**header, "id": request_id}, payload)
            except (OSError, ValueError) as exc:
                self._pending.pop(request_id, None)
                waiter.fail(WorkerGone(f"the model worker's pipe is closed ({exc})"))

    def send(self, header: dict) -> None:
        """A message that has no reply (stop)."""
        with self._lock:
            write_message(self._out, header)

    def _read_replies(self) -> None:
        try:
            while True:
                header, payload = read_message(self._inp)
                with self._lock:
                    waiter = self._pending.pop(header.get("id"), None)
                if waiter is not None:
                    waiter.resolve(header, payload)
        except (WorkerGone, OSError, ValueError) as exc:
            gone = exc if isinstance(exc, WorkerGone) else WorkerGone(str(exc))
            with self._lock:
                self._gone = gone
                pending, self._pending = list(self._pending.values()), {}
            for waiter in pending:
                waiter.fail(gone)

    @property
    def alive(self) -> bool:
        return self._gone is None

    def join(self, timeout: float | None = None) -> None:
        self._reader.join(timeout)
