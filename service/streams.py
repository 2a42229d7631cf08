"""Streaming calls: how many one client connection may hold, and ending them
when the server drains."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import contextmanager
from typing import AsyncIterable, AsyncIterator, TypeVar

from .batcher import retrieve_exception
from .errors import LimitExceededError, ShuttingDownError

T = TypeVar("T")

#: What a stream is told when the server drains; clients reconnect on UNAVAILABLE.
DRAINING_MESSAGE = ("the server is shutting down; the frames it had read were answered; "
                    "reconnect (to another replica if there is one)")


class StreamLimiter:
    """Counts open streams per client connection (gRPC peer) across both APIs,
    and tells them when the server drains (see `until_drain`)."""

    def __init__(self, per_connection: int):
        self.per_connection = per_connection
        self._open: Counter[str] = Counter()
        self._draining: asyncio.Event | None = None

    @property
    def open_streams(self) -> int:
        """Streams open now, on every connection."""
        return sum(self._open.values())

    @contextmanager
    def open(self, peer: str):
        """Hold a stream slot for `peer`; LimitExceededError when none is left."""
        if self._open[peer] >= self.per_connection:
            raise LimitExceededError(
                f"this connection already has {self._open[peer]} streams open (limit {self.per_connection}, "
                "--max-streams-per-connection); close one or open another connection"
            )
        self._open[peer] += 1
        try:
            yield
        finally:
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]

    def _event(self) -> asyncio.Event:
        if self._draining is None:
            self._draining = asyncio.Event()
        return self._draining

    def drain(self) -> None:
        """The server stops: every stream stops reading (see `until_drain`)."""
        self._event().set()

    @property
    def draining(self) -> bool:
        return self._draining is not None and self._draining.is_set()

    async def until_drain(self, requests: AsyncIterable[T]) -> AsyncIterator[T]:
        """The requests of a stream until the client ends it; when the server
        drains first, stop reading and raise ShuttingDownError (UNAVAILABLE),
        so the caller answers what it has read and the client reconnects
        elsewhere instead of holding the drain open until --drain-seconds."""
        draining = asyncio.ensure_future(self._event().wait())
        iterator = requests.__aiter__()
        reading: asyncio.Future | None = None
        try:
            while True:
                if self.draining:
                    raise ShuttingDownError(DRAINING_MESSAGE)
                reading = asyncio.ensure_future(iterator.__anext__())
                # Cancelled twice, the call may leave this read to end on its own
                # (StopAsyncIteration); its exception is then nobody's to raise.
                reading.add_done_callback(retrieve_exception)
                await asyncio.wait({reading, draining}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    raise ShuttingDownError(DRAINING_MESSAGE)
                try:
                    request = reading.result()
                except StopAsyncIteration:
                    return
                yield request
        finally:
            # Also when the call is cancelled while waiting: no read is left behind.
            draining.cancel()
            if reading is not None and not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
