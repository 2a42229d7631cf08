"""Talking to a model worker process, without pickle.

Messages on the worker's stdin/stdout are length-prefixed: a JSON header,
then an optional binary payload. Image batches travel through a shared
memory buffer (a file under /dev/shm, mapped by both processes and unlinked
as soon as the worker has mapped it, so nothing leaks if either side dies).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
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
