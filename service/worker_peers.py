"""The worker's side of its connections (see `worker`).

A `Peer` is one connection: the worker's stdin/stdout in pipe mode, or one
accepted Unix socket in listen mode. Replies to it are written under its
own lock, from whichever worker thread has one ready; once the connection
has closed they are dropped, so a front end that went away never stops the
worker or holds up the replies of the others.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, BinaryIO

from .ipc import write_message


class Peer:
    """One connection to the worker: its streams, its write lock, and its
    aliases and shared memory (guarded by the host's lock)."""

    def __init__(self, inp: BinaryIO, out: BinaryIO, name: str, sock: socket.socket | None = None):
        self.inp = inp
        self.out = out
        self.name = name
        self.sock = sock
        self.open = True
        self.models: dict[str, Any] = {}  # model id -> the worker's HostedModel it names
        self.buffers: dict[tuple, object] = {}  # (model id, slot) -> mapping
        self._write_lock = threading.Lock()

    @classmethod
    def over_socket(cls, sock: socket.socket, name: str) -> "Peer":
        return cls(sock.makefile("rb"), sock.makefile("wb"), name, sock)

    def reply(self, header: dict, payload: bytes = b"") -> None:
        """Send a reply; dropped once the connection has closed."""
        with self._write_lock:
            if not self.open:
                return
            try:
                write_message(self.out, header, payload)
            except (OSError, ValueError):  # the other end went away; its reader sees it and cleans up
                self.open = False

    def close(self) -> None:
        with self._write_lock:
            self.open = False
            if self.sock is None:
                return  # pipe mode: the process exits next
            for closing in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self.out.close, self.inp.close,
                            self.sock.close):
                try:
                    closing()
                except (OSError, ValueError):
                    pass


def listening_socket(path: str) -> socket.socket:
    """A Unix stream socket listening at `path` (a stale file there is removed first)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    return server
