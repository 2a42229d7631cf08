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

Items are anything with `merge_key` (batches merge only with batches of an
equal key: the same model, inputs of the same shape), `rows` and
`max_rows` (0: never merged) attributes; nothing here knows of torch.
"""

from __future__ import annotations

import threading
from collections import deque


class ReadyBatches:
    """A FIFO of prepared batches whose `take` merges them; see the module doc."""

    def __init__(self):
        self._items: deque = deque()
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    def put(self, item) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify()

    def take(self) -> list:
        """The next batch and the waiting batches merged with it (blocking)."""
        with self._changed:
            while not self._items:
                self._changed.wait()
            return self._take_merged()

    def _take_merged(self) -> list:
        first = self._items.popleft()
        if not first.max_rows:
            return [first]
        taken, rows, cap = [first], first.rows, first.max_rows
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
        return taken
