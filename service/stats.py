"""Counters for one served model version (event-loop thread only)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .batcher import BatchRecord


@dataclass
class BatchSizeStats:
    """Executions of one batch size and their cumulative compute time."""

    count: int = 0
    compute_seconds: float = 0.0


@dataclass
class ModelStats:
    """Requests, images and batches served by one model version since load."""

    request_success: int = 0
    request_failure: int = 0
    inference_count: int = 0
    execution_count: int = 0
    queue_seconds_total: float = 0.0
    compute_seconds_total: float = 0.0
    max_batch_size_seen: int = 0
    last_inference_unix: float = 0.0
    by_batch_size: dict[int, BatchSizeStats] = field(default_factory=lambda: defaultdict(BatchSizeStats))

    def record_batch(self, record: BatchRecord) -> None:
        """Batcher callback: one batch ran (or failed)."""
        if record.failed:
            return
        import time

        self.execution_count += 1
        self.inference_count += record.size
        self.queue_seconds_total += sum(record.queue_seconds)
        self.compute_seconds_total += record.compute_seconds
        self.max_batch_size_seen = max(self.max_batch_size_seen, record.size)
        self.last_inference_unix = time.time()
        entry = self.by_batch_size[record.size]
        entry.count += 1
        entry.compute_seconds += record.compute_seconds

    def record_request(self, ok: bool) -> None:
        if ok:
            self.request_success += 1
        else:
            self.request_failure += 1
