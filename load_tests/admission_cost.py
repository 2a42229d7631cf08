"""What a refusal costs the server: `python -m load_tests.admission_cost [N]`.

A batcher with a latency budget of 100 ms whose curve says an image takes a
second: the first request runs (the idle device's probe) and holds the
device; the next N are refused, and the time per refusal is printed. The
batcher is the real one; only the device is an event that never fires
until the end. It measures the server's side of a refusal (prediction,
the refusal's message, the exception), not gRPC's.
"""

from __future__ import annotations

import asyncio
import sys
import time

from framewire.service.batcher import DynamicBatcher
from framewire.service.errors import OverBudgetError
from framewire.service.latency_budget import LatencyBudget


async def refusal_seconds(count: int) -> tuple[float, int]:
    """(seconds per refusal, refusals counted by the batcher) over `count` refused requests."""
    released = asyncio.Event()

    async def device(items):
        await released.wait()
        return items

    policy = LatencyBudget(0.1)
    policy.curve.add_prior(1, 1.0)
    batcher = DynamicBatcher(device, max_batch_size=8, max_delay=0.0, max_queue_size=1000, name="cost",
                             latency_budget=policy)
    batcher.start()
    probe = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    for i in range(count):
        try:
            await batcher.submit([i])
        except OverBudgetError:
            pass
    seconds = (time.perf_counter() - start) / count
    released.set()
    await probe
    await batcher.close()
    return seconds, batcher.budget_status().refused


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    count = int(args[0]) if args else 20000
    seconds, refused = asyncio.run(refusal_seconds(count))
    print(f"a refusal in the batcher: {seconds * 1e6:.1f} us ({refused} of {count} requests refused)")
    return 0 if refused == count else 1


if __name__ == "__main__":
    sys.exit(main())
