"""Batching to a latency budget: when to close a batch, and whom to admit.

A camera pipeline knows one number: a frame older than N ms is worthless.
`LatencyBudget` takes that number and makes the dynamic batcher's two
decisions from it, in place of a hand-tuned queue delay. It is pure logic:
no asyncio, torch or gRPC; every call that depends on time takes `now` (in
the caller's clock, the event loop's for the batcher), so tests drive it
with made-up times.

The compute-time model (`ComputeTimeCurve`, service/compute_curve.py)
    Seconds of compute per batch size, learned online from the batches that
    ran, robust to outliers, with the warm-up's times as a prior.

The arrival rate (`ArrivalRate`)
    Items per second (admitted ones), an exponentially weighted count with
    a time constant of `time_constant` seconds (0.25 by default): it follows
    a change of load within a few time constants and decays to zero when
    arrivals stop. A shorter one reacts faster to a burst and is noisier.

The largest batch (`LatencyBudget.size_limit`)
    Under sustained load the oldest item of a batch arrived while the batch
    before it ran: with `parallel` lanes taking turns, for 1/parallel of a
    batch's compute. So the largest batch the budget allows is the largest
    whose compute, plus that wait, fits the budget: with one lane a batch
    may take half the budget.

The batch size it aims for (`LatencyBudget.target_size`)
    The smallest batch whose throughput (`parallel` batches at once, used to
    `utilisation`) keeps up with the arrival rate; under overload, when none
    does, the size with the most images per second up to `size_limit`. A
    lone request at low load goes at once; a batch grows only as far as the
    load needs.

Closing a batch (`LatencyBudget.decide`)
    Each item's budget deadline is its arrival plus the budget, tightened
    by the request's own deadline. The batch closes now when it holds the
    maximum batch size, or the largest batch the budget allows under
    sustained load (`size_limit`), or the target size; or when waiting for
    one more item no longer pays: no item is expected soon enough for a
    batch one larger to still finish by the tightest deadline of the items
    in it (with no arrivals, at once). Otherwise it waits, at most until the
    last moment a batch one larger could still start in time, and decides
    again on the next arrival. A closing batch takes up to `size_limit`
    items; those of them that would finish past their deadline in it
    (`misses`) are not run. Shrinking the batch to save its oldest item
    instead would hand the next batch an even older one: under overload
    that spirals down to batches of one.

Admission (`LatencyBudget.admission`)
    Before a request is queued, its finish is predicted: the device lanes
    free when their running batches end, the items ahead of it run in
    batches of `size_limit`, then the batch it lands in, counting the items
    expected to join it before its lane frees. When that finish is past its
    budget deadline it is refused at once, with a retry hint of the
    overshoot, instead of queueing only to miss. Queued items that cannot
    finish by their deadline even alone (`is_lost`) are not run either.

Every predicted compute time used against a deadline is the curve's value
times `1 + margin + extra_margin`, which absorbs the spread around the
median. How wide the spread is depends on the machine (a quiet GPU, or CPU
cores shared with the clients), so the policy learns `extra_margin` from
what happened to the items it admitted (`observe_outcomes`): each answer
past its deadline widens it, each in time narrows it a little, so that it
settles where 0.5% of the answers are late, and at zero where none are;
the longer no answer has been late, the faster it narrows, so that a storm
passes. Before the
first measurement (no warm-up prior) nothing can be predicted: batches close
at once and every request is admitted.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Sequence

from .compute_curve import ComputeTimeCurve, ComputeTimeModel, CurvePoint


class ArrivalRate:
    """Items per second, exponentially weighted (see the module doc)."""

    def __init__(self, time_constant: float = 0.25):
        if time_constant <= 0:
            raise ValueError(f"time_constant must be positive seconds, got {time_constant}")
        self.time_constant = time_constant
        self._value = 0.0
        self._at: float | None = None

    def record(self, now: float, count: int = 1) -> None:
        self._value = self.rate(now) + count / self.time_constant
        self._at = now

    def rate(self, now: float) -> float:
        if self._at is None:
            return 0.0
        return self._value * math.exp(-max(0.0, now - self._at) / self.time_constant)


@dataclass(frozen=True)
class Decision:
    """Close the batch now with `size` items, or wait until `wait_until` (or
    the next arrival) and decide again. `size` is what a batch closed now
    would take, also when waiting (for a drain)."""

    close: bool
    size: int
    reason: str
    wait_until: float | None = None


@dataclass(frozen=True)
class Admission:
    """Whether a request is admitted, its predicted finish, and when a refused one may retry."""

    admitted: bool
    predicted_finish: float | None
    retry_after: float = 0.0


@dataclass(frozen=True)
class BudgetStatus:
    """What a budgeted batcher shows: its budget, what it learned, what it chose and did."""

    budget_seconds: float
    curve: tuple[CurvePoint, ...]
    arrival_rate: float
    target_batch_size: int
    batch_size_limit: int
    last_batch_size: int
    refused: int
    #: Requests run although predicted late, because the device was idle (see DynamicBatcher).
    probes: int
    #: Items skipped because a newer request of the same stream came (latest-frame-wins).
    superseded: int
    dropped_over_budget: int
    batches: int
    predicted_seconds_sum: float
    actual_seconds_sum: float
    missed: int
    last_predicted_seconds: float | None
    last_actual_seconds: float | None
    #: The share added to predicted compute times: the base margin plus what late answers added.
    admission_margin: float = 0.0

    def as_dict(self) -> dict:
        """The status document's `budget` object (milliseconds, JSON-ready)."""
        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 3)

        return {
            "budget_ms": ms(self.budget_seconds),
            "curve": [{"batch_size": p.batch_size, "compute_ms": ms(p.seconds), "samples": p.samples,
                       "measured": p.measured, "stale": p.stale} for p in self.curve],
            "arrival_rate_per_second": round(self.arrival_rate, 3),
            "target_batch_size": self.target_batch_size,
            "batch_size_limit": self.batch_size_limit,
            "last_batch_size": self.last_batch_size,
            "batches": self.batches,
            "mean_predicted_ms": ms(self.predicted_seconds_sum / self.batches) if self.batches else None,
            "mean_actual_ms": ms(self.actual_seconds_sum / self.batches) if self.batches else None,
            "last_predicted_ms": ms(self.last_predicted_seconds),
            "last_actual_ms": ms(self.last_actual_seconds),
            "refused": self.refused,
            "dropped_over_budget": self.dropped_over_budget,
            "superseded": self.superseded,
            "probes": self.probes,
            "missed": self.missed,
            "admission_margin": round(self.admission_margin, 3),
        }


#: The share of admitted items answered late that the learned margin settles at.
LATE_TARGET = 0.005
#: Widening of the learned margin per item answered late.
MARGIN_STEP = 0.01
MAX_EXTRA_MARGIN = 1.0
#: Seconds without a late answer after which the learned margin narrows faster (see `observe_outcomes`).
CALM_SECONDS = 2.0


class LatencyBudget:
    """The budget policy of one model version on one device (see the module doc).

    `seconds` is the budget. `parallel` is how many batches the device runs
    at once (model instances on it). Tests pass their own `curve`.
    """

    def __init__(
        self,
        seconds: float,
        *,
        curve: ComputeTimeModel | None = None,
        arrivals: ArrivalRate | None = None,
        parallel: int = 1,
        margin: float = 0.1,
        utilisation: float = 0.9,
    ):
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"the latency budget must be a positive number of seconds, got {seconds}")
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1 batch, got {parallel}")
        if margin < 0:
            raise ValueError(f"margin must not be negative, got {margin}")
        if not 0 < utilisation <= 1:
            raise ValueError(f"utilisation must be within (0, 1], got {utilisation}")
        self.seconds = seconds
        self.curve = curve if curve is not None else ComputeTimeCurve()
        self.arrivals = arrivals if arrivals is not None else ArrivalRate()
        self.parallel = parallel
        self.margin = margin
        self.extra_margin = 0.0  # learned from admitted items answered late (`observe_outcomes`)
        self._last_late: float | None = None
        self.utilisation = utilisation

    # ------------------------------------------------------------ learning

    def observe_batch(self, size: int, seconds: float) -> None:
        self.curve.observe(size, seconds)

    def observe_outcomes(self, now: float, on_time: int, late: int) -> None:
        """Admitted items answered in time, and those answered late (their
        caller ran again past their deadline): each late one widens the
        margin by `MARGIN_STEP`, each one in time narrows it by
        `MARGIN_STEP * LATE_TARGET / (1 - LATE_TARGET)`, within 0 and
        `MAX_EXTRA_MARGIN`. The margin settles where `LATE_TARGET` of the
        answers are late (a running quantile): wide where compute times
        spread, none where they do not. That settling is slow by design (at
        0.5%, 200 answers in time undo one late one), so that a margin widened
        by a passing storm (a cold start into overload, a pause of the
        machine) does not stay for minutes, the narrowing speeds up with the
        square of how many `CALM_SECONDS` have gone by without a late answer
        (while late answers keep coming every second or so, as at the
        target share, it stays as it is). Items dropped from the queue do
        not count: a wider margin drops more, so counting them would let the
        margin feed on itself."""
        if late:
            self._last_late = now
        calm = 0.0 if self._last_late is None else (now - self._last_late) / CALM_SECONDS
        narrow = MARGIN_STEP * LATE_TARGET / (1 - LATE_TARGET) * max(1.0, calm) ** 2
        widened = self.extra_margin + MARGIN_STEP * late - narrow * on_time
        self.extra_margin = min(MAX_EXTRA_MARGIN, max(0.0, widened))

    def record_arrivals(self, now: float, count: int) -> None:
        self.arrivals.record(now, count)

    # ---------------------------------------------------------- predictions

    @property
    def known(self) -> bool:
        """Whether any compute time has been measured (or given as a prior)."""
        return self.curve.seconds(1) is not None

    def item_deadline(self, enqueued: float, deadline: float | None) -> float:
        """An item's budget deadline: arrival plus budget, tightened by its own deadline."""
        budget_end = enqueued + self.seconds
        return budget_end if deadline is None else min(budget_end, deadline)

    def compute(self, size: int) -> float:
        """Predicted compute seconds of a batch, times the margin and its learned part (0 while unknown)."""
        seconds = self.curve.seconds(size)
        return 0.0 if seconds is None else seconds * (1 + self.margin + self.extra_margin)

    def size_limit(self, max_batch_size: int) -> int:
        """The largest batch the budget allows under sustained load (at least 1).

        Under load the oldest item of a batch arrived while the batch
        before it ran on its lane: with `parallel` lanes taking turns that
        is 1/parallel of a batch's compute, so the batch's compute plus
        that wait must fit the budget.
        """
        limit, factor = 1, 1 + 1 / self.parallel
        for size in range(2, max_batch_size + 1):
            if self.compute(size) * factor > self.seconds:
                break
            limit = size
        return limit

    def target_size(self, now: float, max_batch_size: int) -> int:
        """The batch size that gives the most throughput within the budget at the current rate."""
        if not self.known:
            return 1
        rate = self.arrivals.rate(now)
        limit = self.size_limit(max_batch_size)
        best, best_throughput = 1, 0.0
        for size in range(1, limit + 1):
            seconds = self.curve.seconds(size) or 0.0
            throughput = self.parallel * size / seconds if seconds > 0 else math.inf
            if throughput * self.utilisation >= rate:
                return size
            if throughput >= best_throughput:
                best, best_throughput = size, throughput
        return best

    def lanes_free_at(self, now: float, running: Sequence[tuple[float, int]]) -> list[float]:
        """When each of the `parallel` lanes is predicted free, earliest first.

        `running` lists the batches handed to the device and not finished,
        in launch order, as (start, size): a batch starts on the first lane
        free at or after its start.
        """
        lanes = [-math.inf] * self.parallel
        for start, size in running:
            lane = heapq.heappop(lanes)
            heapq.heappush(lanes, max(lane, start) + self.compute(size))
        return sorted(max(now, lane) for lane in lanes)

    def is_lost(self, now: float, deadline: float, start_at: float) -> bool:
        """Whether an item cannot finish by `deadline` even alone, started when a lane frees."""
        if now >= deadline:
            return True
        single = self.curve.seconds(1)
        return single is not None and max(now, start_at) + single > deadline

    # ------------------------------------------------------------ decisions

    def decide(self, now: float, *, waiting: int, deadlines: Sequence[float], start_at: float,
               max_batch_size: int) -> Decision:
        """Close the forming batch now, or wait (see the module doc).

        `waiting` counts the queued items; `deadlines` are the budget
        deadlines of those a batch would take, in the order it takes them;
        `start_at` is when a lane is predicted free.
        """
        count = min(waiting, max_batch_size)
        if not self.known:
            return Decision(True, count, "no compute time measured yet")
        limit = self.size_limit(max_batch_size)
        size = min(count, limit)
        if count >= max_batch_size:
            return Decision(True, size, "maximum batch size")
        if count >= limit:
            return Decision(True, size, "largest batch the budget allows")
        if count >= self.target_size(now, max_batch_size):
            return Decision(True, size, "target batch size for the arrival rate")
        rate = self.arrivals.rate(now)
        tightest = min(deadlines[:count])
        next_arrival = now + 1 / rate if rate > 0 else math.inf
        if max(next_arrival, start_at) + self.compute(count + 1) > tightest:
            return Decision(True, size, "no larger batch can fill within the budget")
        return Decision(False, size, "waiting for the batch to fill", wait_until=tightest - self.compute(count + 1))

    def misses(self, deadline: float, start: float, size: int) -> bool:
        """Whether an item would finish past `deadline` in a batch of `size` started at `start`."""
        return start + self.compute(size) > deadline

    def admission(self, now: float, *, count: int, deadline: float, waiting: int, lanes_free_at: Sequence[float],
                  max_batch_size: int) -> Admission:
        """Admit a request of `count` items with budget deadline `deadline`, or refuse it.

        `waiting` items are queued ahead of it; `lanes_free_at` comes from
        `lanes_free_at`. The backlog is played forward as it will be
        served: whenever a lane frees, the next `size_limit` items run. The
        batch the request lands in counts the items expected to join it
        before its lane frees. Refused when the request would finish past
        its deadline; `retry_after` is by how much.
        """
        if not self.known:
            return Admission(True, None)
        if now >= deadline:
            return Admission(False, None, 0.0)
        size = self.size_limit(max_batch_size)
        rate = self.arrivals.rate(now)
        lanes = sorted(max(now, lane) for lane in lanes_free_at) or [now]
        full, ahead = divmod(waiting, size)
        for _ in range(full):
            heapq.heapreplace(lanes, lanes[0] + self.compute(size))
        remaining, finish = count, now
        while remaining > 0:
            start = lanes[0]
            taken = min(size - ahead, remaining)
            remaining -= taken
            joining = rate * (start - now) if remaining == 0 else 0.0
            expected = min(size, ahead + taken + math.ceil(joining))
            finish = start + self.compute(expected)
            heapq.heapreplace(lanes, finish)
            ahead = 0
        if finish <= deadline:
            return Admission(True, finish)
        return Admission(False, finish, finish - deadline)
