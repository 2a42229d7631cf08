"""An asyncio event loop on virtual time, for deterministic tests of timing logic.

`loop.time()` reads a virtual clock. Whenever nothing is ready to run, the
loop moves the clock straight to the next timer instead of waiting, so
`asyncio.sleep(0.05)`, `wait_for(..., 0.05)` and `call_at` take no wall
time, and every run of a test sees the same times in the same order. I/O
still goes through a real selector (asyncio's own wake-up pipe), polled
without blocking.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Awaitable, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, loop: "VirtualTimeLoop"):
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj, events, data=None):
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self._real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self._real.modify(fileobj, events, data)

    def get_map(self):
        return self._real.get_map()

    def close(self):
        self._real.close()

    def select(self, timeout=None):
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            # No timer is scheduled and nothing is ready: only another thread
            # can wake the loop now. Wait for it, within a generous bound.
            events = self._real.select(60)
            if not events:
                raise RuntimeError("virtual time: nothing is scheduled and nothing woke the loop (a deadlock)")
            return events
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock jumps to the next timer when idle."""

    def __init__(self, start: float = 1000.0):
        self._now = start
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run_virtual(main: Awaitable[T]) -> T:
    """Run a coroutine to completion on a fresh VirtualTimeLoop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
