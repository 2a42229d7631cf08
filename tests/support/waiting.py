"""Waiting on a condition (never a fixed sleep)."""

from __future__ import annotations

import time


def wait_until(condition, timeout: float = 60, what: str = "condition", interval: float = 0.05):
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
