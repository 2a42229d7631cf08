"""Waiting on a condition with a deadline (never a guessed sleep)."""

from __future__ import annotations

import time


def wait_until(condition, timeout: float = 60, what: str = "condition", every: float = 0.1):
    """Poll `condition()` until it returns something truthy, and return that;
    AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
