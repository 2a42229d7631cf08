"""Counters for one served model version (event-loop thread only)."""

from __future__ import annotations

import time
from collections import defaultdict
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

    def record_request(self, ok: bool, seconds: float, *, preprocess: float = 0.0, queue: float = 0.0,
                       compute: float = 0.0) -> None:
        """One request finished (successfully or not) after `seconds`."""
        outcome = self.success if ok else self.failure
        outcome.count += 1
        outcome.seconds += seconds
        if ok:
            for times, value in ((self.request_preprocess, preprocess), (self.request_queue, queue),
                                 (self.request_compute, compute)):
                times.count += 1
                times.seconds += value
