"""The last 15 minutes of a server, one sample a second, kept in memory.

`StatusHistory.record(inputs)` turns what the server knows now (cumulative
counters per model version, queue depths, GPU readings, process figures: a
`StatusInputs`) into one small sample: rates over the second since the
previous sample, mean queue / compute / preprocess time of the requests that
finished in it, latency percentiles of the last few seconds, and the gauges.
It keeps at most `seconds / interval` samples (a ring buffer: no external
store), and the cumulative counters behind them, so `window(key, seconds)`
gives rates over any window it still holds (5 s for "now", 60 s for the
minute). Written from the event loop, read from the HTTP threads: a lock
guards the buffers.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

from .status_inputs import StatusInputs, VersionFigures

#: How long the history reaches back, in seconds.
HISTORY_SECONDS = 15 * 60
#: The rates and mean times each sample keeps per model version.
SAMPLED_RATES = ("requests_per_second", "errors_per_second", "images_per_second", "queue_ms", "compute_ms")


@dataclass(frozen=True)
class Counters:
    """The cumulative counters of one model version at one sample."""

    requests_ok: int
    requests_failed: int
    images: int
    batches: int
    timed_requests: int
    queue_seconds: float
    compute_seconds: float
    preprocess_seconds: float

    @classmethod
    def of(cls, version: VersionFigures) -> "Counters":
        return cls(version.requests_ok, version.requests_failed, version.images, version.batches,
                   version.timed_requests, version.queue_seconds_total, version.compute_seconds_total,
                   version.preprocess_seconds_total)


def rates(then: Counters, now: Counters, seconds: float) -> dict[str, float | None]:
    """Rates and mean times between two readings of the same counters.

    Mean times are None when no request finished in between (nothing to
    average), rates are 0 then.
    """
    timed = now.timed_requests - then.timed_requests
    per_second = 1.0 / seconds if seconds > 0 else 0.0

    def mean_ms(a: float, b: float) -> float | None:
        return (b - a) / timed * 1000 if timed > 0 else None

    return {
        "requests_per_second": max(0, now.requests_ok - then.requests_ok) * per_second,
        "errors_per_second": max(0, now.requests_failed - then.requests_failed) * per_second,
        "images_per_second": max(0, now.images - then.images) * per_second,
        "batches_per_second": max(0, now.batches - then.batches) * per_second,
        "queue_ms": mean_ms(then.queue_seconds, now.queue_seconds),
        "compute_ms": mean_ms(then.compute_seconds, now.compute_seconds),
        "preprocess_ms": mean_ms(then.preprocess_seconds, now.preprocess_seconds),
    }


def rounded(value: float | None, digits: int = 4) -> float | None:
    """`value` to `digits` significant digits (the JSON stays small)."""
    if value is None or value == 0 or not math.isfinite(value):
        return value if value is None or math.isfinite(value) else None
    return round(value, max(0, digits - 1 - int(math.floor(math.log10(abs(value))))))


class StatusHistory:
    """A ring buffer of samples; see the module doc."""

    def __init__(self, seconds: float = HISTORY_SECONDS, interval: float = 1.0):
        self.interval = interval
        size = max(2, int(round(seconds / interval)))
        self._samples: deque[dict] = deque(maxlen=size)
        self._counters: deque[tuple[float, dict[str, Counters]]] = deque(maxlen=size + 1)
        self._lock = threading.Lock()

    def record(self, inputs: StatusInputs) -> dict:
        """Add the sample for `inputs` (taken at `inputs.time`) and return it."""
        counters = {v.key: Counters.of(v) for v in inputs.versions if v.loaded}
        with self._lock:
            previous = self._counters[-1] if self._counters else None
            self._counters.append((inputs.time, counters))
        models = {}
        for version in inputs.versions:
            moved = {}
            if previous is not None and version.key in previous[1] and version.key in counters:
                moved = rates(previous[1][version.key], counters[version.key], inputs.time - previous[0])
            figures = {name: moved.get(name) for name in SAMPLED_RATES}
            figures["latency_p50_ms"] = version.recent_latency_p50_ms
            figures["latency_p99_ms"] = version.recent_latency_p99_ms
            figures["queue_depth"] = version.queue_depth
            models[version.key] = {name: rounded(value) for name, value in figures.items()}
        gpus = {str(g.index): {
            "utilization_percent": g.utilization_percent,
            "memory_used_bytes": g.memory_used_bytes,
            "power_watts": rounded(g.power_watts),
            "temperature_celsius": g.temperature_celsius,
        } for g in inputs.gpus}
        known = inputs.processes
        sample = {
            "time": round(inputs.time, 3),
            "models": models,
            "gpus": gpus,
            "host_cpu_percent": rounded(inputs.host.cpu_percent, 3),
            "server_cpu_percent": rounded(_total(p.cpu_percent for p in known), 3),
            "server_rss_bytes": _total(p.rss_bytes for p in known),
            "server_pss_bytes": _total(p.pss_bytes for p in known),
        }
        with self._lock:
            self._samples.append(sample)
        return sample

    def samples(self) -> list[dict]:
        """Every sample held, oldest first (a copy: safe from any thread)."""
        with self._lock:
            return list(self._samples)

    def window(self, key: str, seconds: float) -> dict[str, float | None] | None:
        """Rates and mean times of one model version over about the last
        `seconds` (as far back as the history holds it), or None before two
        samples of it exist."""
        with self._lock:
            points = list(self._counters)
        if not points or key not in points[-1][1]:
            return None
        now_time, now = points[-1][0], points[-1][1][key]
        then = None
        for moment, counters in points:
            # A little slack: samples land about, not exactly, every interval.
            if key in counters and moment >= now_time - seconds - self.interval / 2:
                then = (moment, counters[key])
                break
        if then is None or then[0] >= now_time:
            return None
        return rates(then[1], now, now_time - then[0]) | {"window_seconds": rounded(now_time - then[0], 3)}


def _total(values) -> float | None:
    """The sum of the values that are known, None when none is."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None
