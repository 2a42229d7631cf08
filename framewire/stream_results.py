"""What a stream reports: each frame's `FrameResult`, and the counts and
latency percentiles behind `CameraStream.stats` and the per-second lines of
`framewire stream`."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import grpc

from framewire.client import Prediction


@dataclass
class FrameResult:
    """What became of one frame.

    `status` is "ok" (answered: see `prediction`), "skipped" (the server
    found it older than max_age_ms), "dropped" (never sent: a newer frame
    replaced it, it grew stale, or the stream closed) or "failed" (a
    per-frame error, or lost when the stream broke; `code` and `message`
    say which). `latency_ms` runs from `submit` to the answer. `tag` is what
    was passed to `submit`.
    """

    stream_id: str
    frame_number: int
    status: str
    code: grpc.StatusCode
    message: str
    prediction: Prediction | None
    latency_ms: float | None
    tag: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def skipped(self) -> bool:
        """The server found the frame older than max_age_ms and skipped it."""
        return self.status == "skipped"

    @property
    def top_label(self) -> str | None:
        """The best class's label (or index) of a classification, else None."""
        if self.prediction is None or not self.prediction.classes:
            return None
        top = self.prediction.classes[0]
        return top.label or str(top.index)


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
