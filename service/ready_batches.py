"""Prepared batches waiting for a worker's compute thread, merged per model.

A worker that serves several front ends gets each one's batches of a model
separately; on the device one forward pass of their rows together costs
about as much as one of them alone. `ReadyBatches.take` hands the compute
thread the oldest waiting batch and, when that batch allows merging (its
`max_rows`, the version's maximum batch size), every later batch of the
same model that allows it too, while the rows stay within the smallest
`max_rows` among them. It stops at the first batch of that model that does
not fit, so a model's batches still run in the order they came; batches of
other models keep their places. A batch without `max_rows` always runs alone.

Batches still being prepared count too: the worker says `expect(group)`
when a mergeable batch of a model (its `group`) arrives and `settle(group)`
once it is prepared (put) or has failed. `take(wait)` then waits up to
`wait` seconds for expected batches of the head's model that would fit, so
a forward pass holds every batch that had reached the worker when it
began, not only those its prepare thread had finished (on a busy CPU the
prepare thread often lags the compute thread by one batch).

Items are anything with `merge_key` (batches merge only with batches of an
equal key: the same model, inputs of the same shape), `group` (the model),
`rows` and `max_rows` (0: never merged) attributes; nothing here knows of
torch.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class ReadyBatches:
    """A FIFO of prepared batches whose `take` merges them; see the module doc."""

    def __init__(self):
        self._items: deque = deque()
        self._changed = threading.Condition()
        self._expected: dict = {}  # group -> mergeable batches arrived but not yet put (being prepared)

    def expect(self, group) -> None:
        """A mergeable batch of `group` arrived; it is put (or settled) once prepared."""
        with self._changed:
            self._expected[group] = self._expected.get(group, 0) + 1

    def settle(self, group) -> None:
        """An expected batch of `group` failed before it was put."""
        with self._changed:
            self._settle(group)
            self._changed.notify_all()

    def _settle(self, group) -> None:
        left = self._expected.get(group, 0) - 1
        if left > 0:
            self._expected[group] = left
        else:
            self._expected.pop(group, None)

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    def put(self, item) -> None:
        with self._changed:
            if item.max_rows:
                self._settle(item.group)
            self._items.append(item)
            self._changed.notify_all()

    def take(self, wait=0.0) -> list:
        """The next batch and the waiting batches merged with it (blocking);
        up to `wait` seconds more for expected batches of its model (`wait`:
        seconds, or a function of the model's group giving them)."""
        with self._changed:
            while not self._items:
                self._changed.wait()
            first = self._items.popleft()
            if not first.max_rows:
                return [first]
            taken, rows, cap = [first], first.rows, first.max_rows
            rows, cap, full = self._merge(taken, rows, cap)
            deadline = time.monotonic() + (wait(first.group) if callable(wait) else wait)
            while not full and self._expected.get(first.group) and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
                rows, cap, full = self._merge(taken, rows, cap)
            return taken

    def _merge(self, taken: list, rows: int, cap: int) -> tuple[int, int, bool]:
        """Move the waiting batches that merge with `taken[0]` into `taken`:
        (rows, cap, whether a batch of its model no longer fits)."""
        first = taken[0]
        kept: deque = deque()
        blocked = False
        for item in self._items:
            if item.merge_key != first.merge_key:
                kept.append(item)
            elif blocked or not item.max_rows or rows + item.rows > min(cap, item.max_rows):
                blocked = True  # later batches of this model must not overtake it
                kept.append(item)
            else:
                taken.append(item)
                rows += item.rows
                cap = min(cap, item.max_rows)
        self._items = kept
        return rows, cap, blocked or rows >= cap


#: A forward pass waits for batches of its model still being prepared at
#: most this share of its recent pass time, and at most MERGE_WAIT_SECONDS.
MERGE_WAIT_SHARE = 0.25
MERGE_WAIT_SECONDS = 0.02


def merge_wait(hosted) -> float:
    """How long a forward pass of `hosted` (anything with `forward_seconds`,
    its recent pass time) waits for its batches being prepared to join it."""
    return min(MERGE_WAIT_SECONDS, MERGE_WAIT_SHARE * hosted.forward_seconds)
