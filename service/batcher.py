"""Dynamic batching: items of concurrent requests gathered into device batches.

The batcher knows nothing of torch or gRPC. It queues opaque items and hands
lists of them to an async batch function, which must return one result per
item, in order.

* A batch closes when it reaches `max_batch_size`, or when `max_delay`
  has passed since its oldest queued item arrived (so an item that waited
  while the device was busy goes at once).
* At most `max_concurrent_batches` batches are in flight: with one model
  instance and a value of 2, the next batch is formed (and its inputs
  copied) while the device runs the current one.
* The queue is bounded (`max_queue_size` items); a request that does not fit
  is refused at once with QueueFullError, and nothing of it is queued.
* A request's items may span batches; `submit` returns their results whole
  and in order.
* Items whose request was cancelled or whose deadline passed are dropped
  before their batch runs; when the batch function fails, every item in the
  batch gets the error. A batch function may also return an exception in
  place of one item's result: that item alone fails (an image that does not
  decode fails its own request, not its batch).

With a `latency_budget` (a `LatencyBudget`, see service/latency_budget.py)
batches close by that policy instead of `max_delay`: the batcher feeds it
each admitted request and each batch's compute time, asks it before queueing
a request (one that cannot finish within its budget is refused at once with
OverBudgetError, nothing of it queued) and while a batch forms (close now, at
what size, or wait). Queued items that can no longer finish within their
budget get OverBudgetError and are not run. A request submitted with a
`latest_of` key supersedes the items of the previous request with that key
still waiting for a batch: they get SupersededError and are not run (a
camera's newest frame wins over its stale ones). One exception keeps it learning:
the curve learns only from batches that run, so when the device is idle and
nothing waits, a request is admitted and run even when predicted late (a
probe, of at most one batch); a curve made too pessimistic by a cold
warm-up or a passing slowdown would otherwise refuse everything for ever. `budget_status()`
shows what it learned and did. Without a budget nothing of this runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from .batcher_budget import BudgetedBatching, _Launch
from .errors import (
    DeadlineExceededError,
    InferenceError,
    QueueFullError,
    ServiceError,
    ShuttingDownError,
)
from .latency_budget import LatencyBudget

BatchFn = Callable[[list[Any]], Awaitable[Sequence[Any]]]


@dataclass(frozen=True)
class ItemResult:
    """One item's result and how it was served."""

    value: Any
    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass(frozen=True)
class BatchRecord:
    """What one batch did, for statistics."""

    size: int
    queue_seconds: tuple[float, ...]
    compute_seconds: float
    failed: bool


class _Work:
    __slots__ = ("item", "future", "enqueued", "deadline", "budget_deadline", "priority", "seq", "taken", "dropped",
                 "probe")

    def __init__(self, item, future, enqueued, deadline, priority, seq, budget_deadline=None, probe=False):
        self.item = item
        self.future = future
        self.enqueued = enqueued
        self.deadline = deadline
        self.budget_deadline = budget_deadline
        self.priority = priority
        self.seq = seq
        self.taken = False
        self.dropped = False
        self.probe = probe

    @property
    def waiting(self) -> bool:
        return not (self.taken or self.dropped or self.future.done())

    def __lt__(self, other: "_Work") -> bool:
        return (-self.priority, self.seq) < (-other.priority, other.seq)


def retrieve_exception(future: asyncio.Future) -> None:
    """Done callback: mark a future's exception as seen (it is raised, or
    dropped on purpose, elsewhere), so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


class DynamicBatcher(BudgetedBatching):
    """Gathers submitted items into batches for `batch_fn`; see the module doc.
    What it does with a latency budget is `BudgetedBatching`'s (batcher_budget.py)."""

    def __init__(
        self,
        batch_fn: BatchFn,
        *,
        max_batch_size: int,
        max_delay: float,
        max_queue_size: int,
        max_concurrent_batches: int = 1,
        preferred_batch_sizes: Sequence[int] = (),
        name: str = "model",
        on_batch: Callable[[BatchRecord], None] | None = None,
        latency_budget: LatencyBudget | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_delay < 0:
            raise ValueError(f"max_delay must not be negative, got {max_delay}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, got {max_queue_size}")
        if max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be at least 1, got {max_concurrent_batches}")
        bad = [s for s in preferred_batch_sizes if not 1 <= s <= max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} fall outside 1..{max_batch_size}")
        self._batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_queue_size = max_queue_size
        self._preferred = sorted(set(preferred_batch_sizes))
        self.name = name
        self._on_batch = on_batch
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._heap: list[_Work] = []
        self._fifo: deque[_Work] = deque()
        self._live = 0
        self._seq = itertools.count()
        self._arrival = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self._worker: asyncio.Task | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._init_budget(latency_budget)

    @property
    def queue_depth(self) -> int:
        """Items waiting (not yet in a batch)."""
        return self._live

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Start forming batches (call from the event loop)."""
        if self._worker is None:
            self._loop = asyncio.get_running_loop()
            self._worker = self._loop.create_task(self._run(), name=f"batcher-{self.name}")

    async def close(self, *, drain: bool = True) -> None:
        """Refuse new items; run (drain=True) or fail the queued ones; wait for batches."""
        self._closing = True
        if not drain:
            for work in list(self._fifo):
                if work.waiting:
                    work.future.set_exception(ShuttingDownError(f"model {self.name} is unloading"))
                    work.future.exception()
                self._drop(work)
        self._arrival.set()
        if self._worker is not None:
            await self._worker
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def submit(self, items: Sequence[Any], *, deadline: float | None = None, priority: int = 0,
                     latest_of: Any = None) -> list[ItemResult]:
        """Queue `items`; return their results in order.

        `deadline` is in the event loop's clock (`loop.time()`). Raises
        QueueFullError when the items do not fit, DeadlineExceededError when
        the deadline passes first, ShuttingDownError while closing,
        OverBudgetError (with a budget) when they cannot be answered within
        it, SupersededError (with a budget) when a later request with the
        same `latest_of` key came while they waited, or what the batch
        function raised.
        """
        if self._closing:
            raise ShuttingDownError(f"model {self.name} is unloading; retry, another version will answer")
        if not items:
            return []
        if self._worker is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        if self._live + len(items) > self.max_queue_size:
            raise QueueFullError(
                f"Exceeds maximum queue size: the queue of model {self.name} is full ({self._live} of "
                f"{self.max_queue_size} images waiting, {len(items)} more asked); retry with backoff"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError(f"deadline passed before model {self.name} could queue the request")
        budget_deadline, probe = None, False
        if self._budget is not None:
            budget_deadline, probe = self._admit(now, len(items), deadline)
        works = []
        for item in items:
            work = _Work(item, loop.create_future(), now, deadline, priority, next(self._seq), budget_deadline, probe)
            heapq.heappush(self._heap, work)
            self._fifo.append(work)
            works.append(work)
        self._live += len(works)
        if latest_of is not None and self._budget is not None:
            self._supersede(latest_of, works)
        self._arrival.set()

        # One timer per request for its deadline, and the item's own future
        # when it is alone: the common case costs no extra task or future.
        timer = loop.call_at(deadline, self._time_out, works) if deadline is not None else None
        if len(works) == 1:
            waiting = works[0].future
        else:
            waiting = asyncio.gather(*(w.future for w in works))
            # A batch can fail in the same moment the caller is cancelled; then no
            # one awaits `waiting`, and asyncio would log its error at ERROR.
            waiting.add_done_callback(retrieve_exception)
        try:
            await waiting
        except BaseException:
            self._abandon(works)
            raise
        else:
            if self._budget is not None:
                self._answered(works, loop.time())
        finally:
            if timer is not None:
                timer.cancel()
            if latest_of is not None and self._latest.get(latest_of) is works:
                del self._latest[latest_of]
        return [w.future.result() for w in works]

    # ---------------------------------------------------------------- internals

    def _time_out(self, works: list[_Work]) -> None:
        """A request's deadline passed: its items still unanswered fail (queued ones are not run)."""
        error = DeadlineExceededError(f"deadline passed while the request waited for model {self.name}")
        for work in works:
            if not work.future.done():
                work.future.set_exception(error)

    def _drop(self, work: _Work) -> None:
        """Take a queued item out of the count (idempotent)."""
        if not work.taken and not work.dropped:
            work.dropped = True
            self._live -= 1

    def _abandon(self, works: list[_Work]) -> None:
        for work in works:
            if not work.future.done():
                work.future.cancel()
            elif not work.future.cancelled():
                work.future.exception()  # retrieved: no "never retrieved" warning
            self._drop(work)

    def _oldest_live(self) -> _Work | None:
        while self._fifo and not self._fifo[0].waiting:
            self._drop(self._fifo.popleft())
        return self._fifo[0] if self._fifo else None

    def _expire(self, now: float) -> None:
        for work in self._fifo:
            if work.waiting and work.deadline is not None and work.deadline <= now:
                work.future.set_exception(
                    DeadlineExceededError(f"deadline passed while the request waited for model {self.name}")
                )
                self._drop(work)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._live == 0:
                if self._closing:
                    return
                self._arrival.clear()
                await self._arrival.wait()
                continue
            await self._slots.acquire()
            batch = await self._form_batch(loop)
            if not batch:
                self._slots.release()
                await asyncio.sleep(0)
                continue
            launch = self._launch(batch, loop.time()) if self._budget is not None else None
            task = loop.create_task(self._execute(batch, loop, launch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _form_batch(self, loop) -> list[_Work]:
        budget_size = None
        while True:
            self._expire(loop.time())
            if self._budget is not None:
                self._drop_over_budget(loop.time())
            oldest = self._oldest_live()
            if oldest is None:
                return []
            if self._budget is not None:
                decision = self._decide(loop.time())
                budget_size = decision.size
                if decision.close or self._closing:
                    break
                remaining = decision.wait_until - loop.time()
            else:
                if self._live >= self.max_batch_size or self._closing:
                    break
                remaining = oldest.enqueued + self.max_delay - loop.time()
                if remaining <= 0:
                    break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        size = min(self._live, self.max_batch_size) if budget_size is None else budget_size
        if self._preferred and size < self.max_batch_size:
            fitting = [p for p in self._preferred if p <= size]
            size = fitting[-1] if fitting else size
        batch: list[_Work] = []
        while len(batch) < size and self._heap:
            work = heapq.heappop(self._heap)
            if not work.waiting:
                self._drop(work)
                continue
            work.taken = True
            self._live -= 1
            batch.append(work)
        if self._budget is not None:
            batch = self._without_misses(batch, loop.time())
        return batch

    async def _execute(self, batch: list[_Work], loop, launch: _Launch | None = None) -> None:
        start = loop.time()
        queue_seconds = tuple(start - w.enqueued for w in batch)
        failed = False
        if launch is not None:
            launch.start = max(launch.start, start)
        try:
            results = await self._batch_fn([w.item for w in batch])
            if len(results) != len(batch):
                raise InferenceError(
                    f"model {self.name}: the batch function returned {len(results)} results "
                    f"for {len(batch)} inputs"
                )
        except Exception as exc:
            failed = True
            error = exc if isinstance(exc, ServiceError) else InferenceError(
                f"model {self.name} failed on a batch of {len(batch)}: {type(exc).__name__}: {exc}"
            )
            for work in batch:
                if not work.future.done():
                    work.future.set_exception(error)
        else:
            compute = loop.time() - start
            # Free the slot first: the next batch is formed and launched before
            # the waiting requests wake up to answer their clients.
            self._slots.release()
            for work, value, waited in zip(batch, results, queue_seconds):
                if work.future.done():
                    continue
                if isinstance(value, BaseException):
                    work.future.set_exception(value)
                else:
                    work.future.set_result(ItemResult(value, waited, compute, len(batch)))
        finally:
            if failed:
                self._slots.release()
            if launch is not None:
                self._finish_launch(launch, batch, loop.time(), failed)
            if self._on_batch is not None:
                self._on_batch(BatchRecord(len(batch), queue_seconds, loop.time() - start, failed))
