"""DynamicBatcher in plain asyncio: batches held open with events, no sleeps that guess."""

from __future__ import annotations

import asyncio

import pytest

from framewire.service.batcher import DynamicBatcher
from framewire.service.errors import DeadlineExceededError, InferenceError, QueueFullError, ShuttingDownError


class Recorder:
    """A batch function that records batches and can be held at a gate."""

    def __init__(self, gate: asyncio.Event | None = None):
        self.batches: list[list] = []
        self.gate = gate
        self.started = asyncio.Event()

    async def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [f"r{x}" for x in items]


def make(fn, **kw):
    params = dict(max_batch_size=4, max_delay=0.05, max_queue_size=16, name="m")
    params.update(kw)
    b = DynamicBatcher(fn, **params)
    b.start()
    return b


def run(coro):
    return asyncio.run(coro)


def test_concurrent_items_form_one_batch_and_results_keep_order():
    async def main():
        rec = Recorder()
        b = make(rec, max_delay=10.0)
        results = await asyncio.gather(*(b.submit([i]) for i in range(4)))
        await b.close()
        return rec, results

    rec, results = run(main())
    assert rec.batches == [[0, 1, 2, 3]]
    assert [r[0].value for r in results] == ["r0", "r1", "r2", "r3"]
    assert all(r[0].batch_size == 4 for r in results)


def test_the_delay_is_timed_from_the_first_item():
    async def main():
        rec = Recorder()
        b = make(rec, max_delay=0.02, max_batch_size=8)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(b.submit([2]))
        await asyncio.gather(first, second)
        elapsed = loop.time() - t0
        await b.close()
        return rec, elapsed

    rec, elapsed = run(main())
    assert rec.batches == [[1, 2]]
    assert 0.02 <= elapsed < 1.0


def test_a_multi_item_request_spans_batches_and_comes_back_whole():
    async def main():
        rec = Recorder()
        b = make(rec, max_batch_size=3, max_delay=0.0)
        out = await b.submit(list(range(7)))
        await b.close()
        return rec, out

    rec, out = run(main())
    assert [len(x) for x in rec.batches] == [3, 3, 1]
    assert [r.value for r in out] == [f"r{i}" for i in range(7)]


def test_items_wait_while_the_device_is_busy_then_go_together():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=8, max_delay=0.0)
        first = asyncio.ensure_future(b.submit(["a"]))
        await rec.started.wait()
        rest = [asyncio.ensure_future(b.submit([i])) for i in range(5)]
        await asyncio.sleep(0.01)
        assert b.queue_depth == 5 and len(rec.batches) == 1
        gate.set()
        await asyncio.gather(first, *rest)
        await b.close()
        return rec

    rec = run(main())
    assert rec.batches == [["a"], [0, 1, 2, 3, 4]]


def test_the_next_batch_forms_while_the_current_one_runs():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=2, max_delay=0.0, max_concurrent_batches=2)
        futures = [asyncio.ensure_future(b.submit([i])) for i in range(4)]
        while len(rec.batches) < 2:
            await asyncio.sleep(0.001)
        assert rec.batches == [[0, 1], [2, 3]]  # both formed before either finished
        gate.set()
        await asyncio.gather(*futures)
        await b.close()

    run(main())


def test_a_full_queue_refuses_at_once_and_queues_nothing():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=1, max_delay=0.0, max_queue_size=3)
        running = asyncio.ensure_future(b.submit(["x"]))
        await rec.started.wait()
        queued = asyncio.ensure_future(b.submit([1, 2]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match=r"full \(2 of 3 images waiting, 2 more asked\); retry"):
            await b.submit([3, 4])
        assert b.queue_depth == 2
        gate.set()
        await asyncio.gather(running, queued)
        await b.close()
        return rec

    rec = run(main())
    assert [3] not in rec.batches and [4] not in rec.batches


def test_cancelled_requests_are_dropped_before_their_batch_runs():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=8, max_delay=0.0)
        running = asyncio.ensure_future(b.submit(["busy"]))
        await rec.started.wait()
        doomed = asyncio.ensure_future(b.submit(["cancelled"]))
        kept = asyncio.ensure_future(b.submit(["kept"]))
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert b.queue_depth == 1
        gate.set()
        await asyncio.gather(running, kept)
        await b.close()
        return rec

    rec = run(main())
    assert rec.batches == [["busy"], ["kept"]]


def test_expired_deadlines_are_dropped_and_reported():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=8, max_delay=0.0)
        loop = asyncio.get_running_loop()
        running = asyncio.ensure_future(b.submit(["busy"]))
        await rec.started.wait()
        late = asyncio.ensure_future(b.submit(["late"], deadline=loop.time() + 0.02))
        fine = asyncio.ensure_future(b.submit(["fine"], deadline=loop.time() + 30))
        with pytest.raises(DeadlineExceededError):
            await late
        gate.set()
        await asyncio.gather(running, fine)
        await b.close()
        return rec

    rec = run(main())
    assert rec.batches == [["busy"], ["fine"]]


def test_a_deadline_already_past_is_refused():
    async def main():
        b = make(Recorder())
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExceededError):
            await b.submit([1], deadline=loop.time() - 1)
        await b.close()

    run(main())


def test_a_failing_batch_fails_every_waiting_request():
    async def boom(items):
        raise RuntimeError("kernel exploded")

    async def main():
        b = make(boom, max_delay=10.0)
        results = await asyncio.gather(*(b.submit([i]) for i in range(4)), return_exceptions=True)
        await b.close()
        return results

    results = run(main())
    assert all(isinstance(r, InferenceError) and "kernel exploded" in str(r) for r in results)


def test_a_batch_function_returning_the_wrong_count_is_an_error():
    async def short(items):
        return items[:-1]

    async def main():
        b = make(short, max_delay=0.0)
        with pytest.raises(InferenceError, match="returned 1 results for 2 inputs"):
            await b.submit([1, 2])
        await b.close()

    run(main())


def test_the_batcher_keeps_serving_after_a_failure():
    calls = []

    async def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("first batch fails")
        return items

    async def main():
        b = make(flaky, max_delay=0.0)
        with pytest.raises(InferenceError):
            await b.submit([1])
        out = await b.submit([2])
        await b.close()
        return out

    assert run(main())[0].value == 2


def test_higher_priority_items_run_first():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=1, max_delay=0.0)
        running = asyncio.ensure_future(b.submit(["busy"]))
        await rec.started.wait()
        low = asyncio.ensure_future(b.submit(["low"]))
        high = asyncio.ensure_future(b.submit(["high"], priority=5))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(running, low, high)
        await b.close()
        return rec

    assert run(main()).batches == [["busy"], ["high"], ["low"]]


def test_preferred_batch_sizes_shape_partial_batches():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=8, max_delay=0.0, preferred_batch_sizes=[4])
        running = asyncio.ensure_future(b.submit(["busy"]))
        await rec.started.wait()
        waiting = [asyncio.ensure_future(b.submit([i])) for i in range(6)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(running, *waiting)
        await b.close()
        return rec

    assert [len(x) for x in run(main()).batches] == [1, 4, 2]


def test_close_drains_queued_work_and_then_refuses():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=1, max_delay=0.0)
        futures = [asyncio.ensure_future(b.submit([i])) for i in range(3)]
        await rec.started.wait()
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDownError):
            await b.submit([9])
        gate.set()
        await closing
        return [f.result()[0].value for f in futures]

    assert run(main()) == ["r0", "r1", "r2"]


def test_close_without_drain_fails_queued_work():
    async def main():
        gate = asyncio.Event()
        rec = Recorder(gate)
        b = make(rec, max_batch_size=1, max_delay=0.0)
        running = asyncio.ensure_future(b.submit(["busy"]))
        await rec.started.wait()
        queued = asyncio.ensure_future(b.submit(["queued"]))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(b.close(drain=False))
        await asyncio.sleep(0)
        gate.set()
        await closing
        assert (await running)[0].value == "rbusy"
        with pytest.raises(ShuttingDownError):
            await queued

    run(main())


def test_batch_records_report_sizes_and_waits():
    records = []

    async def main():
        b = make(Recorder(), max_delay=10.0, on_batch=records.append)
        await asyncio.gather(*(b.submit([i]) for i in range(4)))
        await b.close()

    run(main())
    assert [r.size for r in records] == [4]
    assert len(records[0].queue_seconds) == 4 and not records[0].failed


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_delay": -1}, "max_delay"),
    ({"max_queue_size": 0}, "max_queue_size"),
    ({"preferred_batch_sizes": [9]}, "preferred batch sizes"),
])
def test_settings_are_validated_with_the_bad_value(kwargs, message):
    params = dict(max_batch_size=4, max_delay=0.0, max_queue_size=4)
    params.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(Recorder(), **params)
