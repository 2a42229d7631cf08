"""Counters for one served model version (event-loop thread only)."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from .batcher import BatchRecord


@dataclass
class BatchSizeStats:
    """Executions of one batch size and their cumulative compute time."""

    count: int = 0
    compute_seconds: float = 0.0


@dataclass
class RequestTimes:
    """A count of requests and their cumulative durations."""

    count: int = 0
    seconds: float = 0.0


class RecentWindow:
    """Events of the last `seconds` (at most `limit` of them), for rates and
    percentiles of "now" rather than since load."""

    def __init__(self, seconds: float = 60.0, limit: int = 100_000):
        self.seconds = seconds
        self.started = time.monotonic()
        self._events: deque[tuple[float, float, bool]] = deque(maxlen=limit)

    def add(self, value: float, ok: bool = True) -> None:
        self._events.append((time.monotonic(), value, ok))

    def _recent(self) -> tuple[list[tuple[float, float, bool]], float]:
        now = time.monotonic()
        horizon = now - self.seconds
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()
        span = max(min(self.seconds, now - self.started), 1e-3)
        return list(self._events), span

    def rates(self) -> tuple[float, float, float]:
        """(ok events per second, failed events per second, sum of ok values per second)."""
        events, span = self._recent()
        ok = [v for _, v, good in events if good]
        return len(ok) / span, (len(events) - len(ok)) / span, sum(ok) / span

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the ok values, 0 when there are none."""
        return (self.percentiles((q,)) or [0.0])[0]

    def percentiles(self, qs: tuple[float, ...], within: float | None = None) -> list[float] | None:
        """The qs-th percentiles (0..100) of the ok values, from one sort, or
        None when there are none; `within` narrows the window to the last so
        many seconds."""
        events, _ = self._recent()
        horizon = time.monotonic() - within if within is not None else float("-inf")
        values = sorted(v for t, v, good in events if good and t >= horizon)
        if not values:
            return None
        return [values[min(len(values) - 1, int(q / 100 * len(values)))] for q in qs]


@dataclass
class ModelStats:
    """Requests, images and batches served by one model version since load.

    Per request: success and failure counts with total time, and the time
    requests spent preprocessing, queued and computing. Per batch: images,
    executions and compute time by batch size.
    """

    success: RequestTimes = field(default_factory=RequestTimes)
    failure: RequestTimes = field(default_factory=RequestTimes)
    request_queue: RequestTimes = field(default_factory=RequestTimes)
    request_preprocess: RequestTimes = field(default_factory=RequestTimes)
    request_compute: RequestTimes = field(default_factory=RequestTimes)
    inference_count: int = 0
    execution_count: int = 0
    compute_seconds_total: float = 0.0
    max_batch_size_seen: int = 0
    last_inference_unix: float = 0.0
    by_batch_size: dict[int, BatchSizeStats] = field(default_factory=lambda: defaultdict(BatchSizeStats))
    recent_requests: RecentWindow = field(default_factory=RecentWindow)
    recent_batches: RecentWindow = field(default_factory=RecentWindow)

    @property
    def request_success(self) -> int:
        return self.success.count

    @property
    def request_failure(self) -> int:
        return self.failure.count

    def record_batch(self, record: BatchRecord) -> None:
        """Batcher callback: one batch ran (or failed)."""
        if record.failed:
            return
        self.execution_count += 1
        self.inference_count += record.size
        self.compute_seconds_total += record.compute_seconds
        self.max_batch_size_seen = max(self.max_batch_size_seen, record.size)
        self.last_inference_unix = time.time()
        entry = self.by_batch_size[record.size]
        entry.count += 1
        entry.compute_seconds += record.compute_seconds
        self.recent_batches.add(record.size)

    def record_request(self, ok: bool, seconds: float, *, preprocess: float = 0.0, queue: float = 0.0,
                       compute: float = 0.0) -> None:
        """One request finished (successfully or not) after `seconds`."""
        outcome = self.success if ok else self.failure
        outcome.count += 1
        outcome.seconds += seconds
        self.recent_requests.add(seconds, ok)
        if ok:
            for times, value in ((self.request_preprocess, preprocess), (self.request_queue, queue),
                                 (self.request_compute, compute)):
                times.count += 1
                times.seconds += value

    def recent(self) -> dict[str, float]:
        """Rates and latency percentiles over the last minute."""
        requests, errors, _ = self.recent_requests.rates()
        batches, _, images = self.recent_batches.rates()
        return {
            "requests_per_second": requests,
            "errors_per_second": errors,
            "images_per_second": images,
            "average_batch_size": images / batches if batches else 0.0,
            "latency_p50_ms": self.recent_requests.percentile(50) * 1000,
            "latency_p99_ms": self.recent_requests.percentile(99) * 1000,
        }
