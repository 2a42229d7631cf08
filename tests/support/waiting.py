"""Waiting on a condition (never a fixed sleep).

A test that needs the server in some state polls for that state, with a
deadline, and fails saying what it waited for if the state never comes.
"""

from __future__ import annotations

import time


def wait_until(condition, timeout: float = 60, what: str = "condition", interval: float = 0.05):
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last seen: {value!r})")
        time.sleep(interval)


def model_status(client, model: str):
    """The server's runtime status of `model` (queue depth, counts), through GetServerStatus."""
    models = {m.model: m for m in client.server_status().models}
    assert model in models, f"the server reports no model {model!r}; it has {sorted(models)}"
    return models[model]


def wait_for_queue_depth(client, model: str, depth: int, timeout: float = 30):
    """Wait until exactly `depth` images of `model` wait in its batcher; returns its status."""
    seen = []

    def reached():
        seen.append(model_status(client, model))
        return seen[-1].queue_depth == depth and seen[-1]

    try:
        return wait_until(reached, timeout, f"{depth} image(s) of {model!r} waiting in the queue")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the queue depth was {seen[-1].queue_depth}") from None
