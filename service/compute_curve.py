"""The compute-time model of a latency budget (service/latency_budget.py).

Seconds of compute per batch size, learned online from the batches that
ran. Sizes fall into power-of-two buckets (1, 2, 3-4, 5-8, ...); each
bucket keeps its last `window` measurements and stands for the one at
the median compute time, so an outlier (a page fault, a GC pause, a
noisy neighbour) moves it by one rank at most. Warm-up measurements
enter as a prior: `prior_weight` copies each, which real measurements
push out of the window over time. Between buckets the curve is
interpolated linearly; below the smallest it is flat and above the
largest it grows in proportion to the batch size: as the cost per image
falls with batch size, both overestimate, the safe side for a deadline.
Times are made non-decreasing in batch size.

A bucket no batch has refreshed within the last `window` measurements
is stale: it may hold a time measured in a bad moment (a batch of 3
that ran while the machine was swamped), and under load the policy
would then never run that size again to learn better, capping every
batch below it for good. A stale bucket is therefore capped at the time
the fresh buckets below it predict in proportion to size: a larger batch
never has to cost more per image than the smaller ones, since it could
run as several of them. Fresh measurements always stand as measured.

One curve describes one model version on one device: a batcher whose
batches run on two different devices needs one curve per device, so it
belongs next to the device.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CurvePoint:
    """One bucket of the learned curve."""

    batch_size: int
    seconds: float
    samples: int
    measured: int
    #: Not refreshed within the last `window` measurements: capped by the fresh buckets below it.
    stale: bool = False


class ComputeTimeModel(Protocol):
    """What LatencyBudget needs of a compute-time model."""

    def seconds(self, batch_size: int) -> float | None: ...

    def observe(self, batch_size: int, seconds: float) -> None: ...

    def points(self) -> tuple[CurvePoint, ...]: ...


class ComputeTimeCurve:
    """Compute seconds per batch size, learned per bucket (see the module doc)."""

    def __init__(self, *, window: int = 32, prior_weight: int = 4):
        if window < 1:
            raise ValueError(f"window must be at least 1 measurement, got {window}")
        if not 1 <= prior_weight <= window:
            raise ValueError(f"prior_weight must be within 1..window ({window}), got {prior_weight}")
        self.window = window
        self.prior_weight = prior_weight
        self._buckets: dict[int, deque[tuple[float, int, bool]]] = {}
        self._measured = 0  # real measurements so far, in all buckets
        self._refreshed: dict[int, int] = {}  # bucket -> `_measured` at its last real measurement
        self._points: tuple[CurvePoint, ...] | None = None

    @staticmethod
    def bucket(batch_size: int) -> int:
        """The bucket of a batch size: 1 -> 0, 2 -> 1, 3-4 -> 2, 5-8 -> 3, ..."""
        return (batch_size - 1).bit_length()

    def add_prior(self, batch_size: int, seconds: float) -> None:
        """A warm-up measurement, weighted as `prior_weight` measurements."""
        self._add(batch_size, seconds, prior=True, copies=self.prior_weight)

    def observe(self, batch_size: int, seconds: float) -> None:
        """A measured batch."""
        self._add(batch_size, seconds, prior=False, copies=1)

    def _add(self, batch_size: int, seconds: float, *, prior: bool, copies: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"compute time must be a finite number of seconds >= 0, got {seconds}")
        key = self.bucket(batch_size)
        window = self._buckets.setdefault(key, deque(maxlen=self.window))
        window.extend([(seconds, batch_size, prior)] * copies)
        if not prior:
            self._measured += 1
            self._refreshed[key] = self._measured
        self._points = None

    def _stale(self, key: int) -> bool:
        return self._measured - self._refreshed.get(key, 0) >= self.window

    def points(self) -> tuple[CurvePoint, ...]:
        """The curve's points, by batch size, times non-decreasing."""
        if self._points is None:
            points, floor, per_image = [], 0.0, math.inf
            for key in sorted(self._buckets):
                samples = sorted(self._buckets[key])
                seconds, size, _ = samples[(len(samples) - 1) // 2]
                stale = self._stale(key)
                if stale:
                    seconds = min(seconds, per_image * size)
                else:
                    per_image = min(per_image, seconds / size)
                floor = max(floor, seconds)
                points.append(CurvePoint(size, floor, len(samples), sum(not p for _, _, p in samples), stale))
            self._points = tuple(points)
        return self._points

    def seconds(self, batch_size: int) -> float | None:
        """Predicted compute seconds of a batch; None before any measurement."""
        points = self.points()
        if not points:
            return None
        first, last = points[0], points[-1]
        if batch_size <= first.batch_size:
            return first.seconds
        if batch_size >= last.batch_size:
            return last.seconds * batch_size / last.batch_size
        for low, high in zip(points, points[1:]):
            if batch_size <= high.batch_size:
                share = (batch_size - low.batch_size) / (high.batch_size - low.batch_size)
                return low.seconds + share * (high.seconds - low.seconds)
        raise AssertionError("unreachable: the points cover every size between the first and the last")
