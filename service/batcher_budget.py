"""The dynamic batcher's latency-budget half (see service/batcher.py's module doc).

`BudgetedBatching` is mixed into `DynamicBatcher`: admission, latest-frame-wins,
dropping items that can no longer finish in time, the close-now decision,
and learning from each launched batch, all through the `LatencyBudget`
policy (service/latency_budget.py). It reads the batcher's queue state
(`_fifo`, `_heap`, `_live`, `_latest`, `_drop`, `name`, `max_batch_size`,
`_loop`); without a budget none of it runs.
"""

from __future__ import annotations

import heapq
from typing import Any

from .errors import OverBudgetError, SupersededError
from .latency_budget import BudgetStatus, LatencyBudget


class _Launch:
    """A budgeted batch handed to the device: when it started, and whether it
    still waits behind `ahead` earlier batches for a lane."""

    __slots__ = ("start", "size", "ahead", "predicted_end", "oldest_enqueued")

    def __init__(self, start, size, ahead, predicted_end, oldest_enqueued):
        self.start = start
        self.size = size
        self.ahead = ahead
        self.predicted_end = predicted_end
        self.oldest_enqueued = oldest_enqueued


class BudgetedBatching:
    """Latency-budget state and decisions of a DynamicBatcher."""

    def _init_budget(self, budget: LatencyBudget | None) -> None:
        self._budget = budget
        self._launches: list[_Launch] = []
        self._latest: dict[Any, list] = {}
        self._refused = 0
        self._superseded = 0
        self._probes = 0
        self._dropped_over_budget = 0
        self._missed = 0
        self._budget_batches = 0
        self._predicted_sum = 0.0
        self._actual_sum = 0.0
        self._last_latency: tuple[float, float] | None = None
        self._last_size = 0


    def budget_status(self, now: float | None = None) -> BudgetStatus | None:
        """The budget, learned curve, chosen sizes and what happened; None without a budget.

        `now` defaults to the event loop's clock (readable from any thread).
        """
        budget = self._budget
        if budget is None:
            return None
        if now is None:
            now = self._loop.time() if self._loop is not None else 0.0
        last = self._last_latency
        return BudgetStatus(
            budget_seconds=budget.seconds,
            curve=budget.curve.points(),
            arrival_rate=budget.arrivals.rate(now),
            target_batch_size=budget.target_size(now, self.max_batch_size),
            batch_size_limit=budget.size_limit(self.max_batch_size),
            last_batch_size=self._last_size,
            refused=self._refused,
            probes=self._probes,
            superseded=self._superseded,
            dropped_over_budget=self._dropped_over_budget,
            batches=self._budget_batches,
            predicted_seconds_sum=self._predicted_sum,
            actual_seconds_sum=self._actual_sum,
            missed=self._missed,
            last_predicted_seconds=last[0] if last else None,
            last_actual_seconds=last[1] if last else None,
            admission_margin=budget.margin + budget.extra_margin,
        )

    def _lanes(self, now: float) -> list[float]:
        running = [(launch.start, launch.size) for launch in self._launches]
        return self._budget.lanes_free_at(now, running)

    def _admit(self, now: float, count: int, deadline: float | None) -> tuple[float, bool]:
        """(budget deadline, probe) of a request admitted now; raises OverBudgetError when refused."""
        budget = self._budget
        own = budget.item_deadline(now, deadline)
        verdict = budget.admission(now, count=count, deadline=own, waiting=self._live,
                                   lanes_free_at=self._lanes(now), max_batch_size=self.max_batch_size)
        if (not verdict.admitted and self._live == 0 and not self._launches and own > now
                and count <= budget.size_limit(self.max_batch_size)):
            # Idle: run it anyway, so the curve learns whether it is still this slow.
            self._probes += 1
            budget.record_arrivals(now, count)
            return own, True
        if not verdict.admitted:
            self._refused += 1
            wait = "" if verdict.predicted_finish is None else \
                f": it would be answered in {(verdict.predicted_finish - now) * 1000:.0f} ms"
            tightened = "" if deadline is None or deadline >= now + budget.seconds else \
                " (tightened by the request's deadline)"
            raise OverBudgetError(
                f"model {self.name} cannot answer within the latency budget of {(own - now) * 1000:.0f} ms"
                f"{tightened}{wait}; retry in {verdict.retry_after * 1000:.0f} ms",
                verdict.retry_after,
            )
        budget.record_arrivals(now, count)
        return own, False

    def _supersede(self, key: Any, works: list) -> None:
        """Latest wins: the previous request of `key` gives up its items still waiting."""
        for work in self._latest.get(key, ()):
            if work.waiting:
                self._superseded += 1
                work.future.set_exception(SupersededError(
                    f"skipped: a newer request of the same stream reached model {self.name} while this one "
                    "still waited for a batch"))
                self._drop(work)
        self._latest[key] = works

    def _drop_over_budget(self, now: float) -> None:
        start_at = self._lanes(now)[0]
        for work in self._fifo:
            if work.waiting and not work.probe and self._budget.is_lost(now, work.budget_deadline, start_at):
                self._dropped_over_budget += 1
                work.future.set_exception(OverBudgetError(
                    f"model {self.name} could no longer answer within the latency budget of "
                    f"{(work.budget_deadline - work.enqueued) * 1000:.0f} ms; retry when the load falls",
                    max(0.0, start_at - now), dropped=True,
                ))
                self._drop(work)

    def _without_misses(self, batch: list, now: float) -> list:
        """The batch less the items that would finish past their budget in it (answered, not run)."""
        start_at = self._lanes(now)[0]
        kept = []
        for work in batch:
            if not work.probe and self._budget.misses(work.budget_deadline, start_at, len(batch)):
                self._dropped_over_budget += 1
                work.future.set_exception(OverBudgetError(
                    f"model {self.name} could no longer answer within the latency budget of "
                    f"{(work.budget_deadline - work.enqueued) * 1000:.0f} ms; retry when the load falls",
                    max(0.0, start_at - now), dropped=True,
                ))
            else:
                kept.append(work)
        return kept

    def _decide(self, now: float):
        count = min(self._live, self.max_batch_size)
        candidates = heapq.nsmallest(count, [w for w in self._heap if w.waiting])
        return self._budget.decide(now, waiting=self._live, deadlines=[w.budget_deadline for w in candidates],
                                   start_at=self._lanes(now)[0], max_batch_size=self.max_batch_size)

    def _launch(self, batch: list, now: float) -> _Launch:
        budget = self._budget
        start_at = self._lanes(now)[0]
        launch = _Launch(now, len(batch), max(0, len(self._launches) - budget.parallel + 1),
                         start_at + budget.compute(len(batch)), min(w.enqueued for w in batch))
        self._launches.append(launch)
        return launch

    def _finish_launch(self, launch: _Launch, batch: list, end: float, failed: bool) -> None:
        """Learn from a finished batch and free the lane it held."""
        self._launches.remove(launch)
        for waiting in self._launches:
            # A batch launched behind others starts on the device when one of them ends.
            if waiting.ahead > 0:
                waiting.ahead -= 1
                if waiting.ahead == 0:
                    waiting.start = max(waiting.start, end)
        if failed:
            return
        self._budget.observe_batch(len(batch), end - launch.start)
        predicted, actual = launch.predicted_end - launch.oldest_enqueued, end - launch.oldest_enqueued
        self._budget_batches += 1
        self._predicted_sum += predicted
        self._actual_sum += actual
        self._last_latency = (predicted, actual)
        self._last_size = len(batch)
        self._missed += sum(1 for w in batch if end > w.budget_deadline)

    def _answered(self, works: list, now: float) -> None:
        """A budgeted request's items are answered and its caller runs again
        `now` (past any delay of the event loop in noticing the batch end):
        in time or late, for the learned margin."""
        late = sum(1 for w in works if not w.probe and now > w.budget_deadline)
        self._budget.observe_outcomes(now, len(works) - late, late)
