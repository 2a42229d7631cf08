"""Counts and latency percentiles of a stream, for `CameraStream.stats` and
the per-second lines of `framewire stream`."""

from __future__ import annotations

import collections
import threading
import time
from typing import Sequence


class StreamStats:
    """Counts since the start and for the current window (see `take_window`)."""

    FIELDS = ("captured", "sent", "answered", "skipped", "dropped", "failed")

    def __init__(self):
        self.totals = dict.fromkeys(self.FIELDS, 0)
        self.reconnects = 0
        self.latencies_ms: collections.deque = collections.deque(maxlen=100_000)
        self._window = dict.fromkeys(self.FIELDS, 0)
        self._window_latencies: list[float] = []
        self._window_start = time.monotonic()
        self._lock = threading.Lock()

    def add(self, name: str, latency_ms: float | None = None) -> None:
        with self._lock:
            self.totals[name] += 1
            self._window[name] += 1
            if latency_ms is not None:
                self.latencies_ms.append(latency_ms)
                self._window_latencies.append(latency_ms)

    def take_window(self) -> dict:
        """Per-second rates and answered-frame latency percentiles (ms) since
        the previous call; starts a new window."""
        with self._lock:
            now = time.monotonic()
            seconds = max(now - self._window_start, 1e-9)
            window = {f"{k}_fps": v / seconds for k, v in self._window.items()}
            window.update(percentiles(self._window_latencies))
            window["seconds"] = seconds
            self._window = dict.fromkeys(self.FIELDS, 0)
            self._window_latencies = []
            self._window_start = now
        return window

    def summary(self) -> dict:
        """Totals, reconnects and latency percentiles (ms) over the last 100,000 answers."""
        with self._lock:
            return {**self.totals, "reconnects": self.reconnects, **percentiles(list(self.latencies_ms))}


def percentiles(values: Sequence[float]) -> dict:
    """p50, p90 and p99 (nearest rank) of `values`; None when empty."""
    ordered = sorted(values)
    out = {}
    for p in (50, 90, 99):
        out[f"p{p}_ms"] = ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else None
    return out
