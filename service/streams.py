"""Limits on streaming calls: streams per client connection."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

from .errors import LimitExceededError


class StreamLimiter:
    """Counts open streams per client connection (gRPC peer) across both APIs."""

    def __init__(self, per_connection: int):
        self.per_connection = per_connection
        self._open: Counter[str] = Counter()

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
