"""DynamicBatcher with a latency budget, on virtual time.

The event loop's clock is virtual (support/virtual_time.py): it jumps to the
next timer whenever nothing is ready, so a batch that "computes" for 84 ms
takes no wall time and every run sees the same times. The device is a fake
(the one thing that cannot run here deterministically): its batches take
`fixed + per image` milliseconds of virtual time, and the policy's curve is
primed with those times as the server's warm-up primes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from framewire.service.batcher import DynamicBatcher, ItemResult
from framewire.service.errors import OverBudgetError, ServiceError, SupersededError
from framewire.service.compute_curve import ComputeTimeCurve
from framewire.service.latency_budget import ArrivalRate, LatencyBudget
from support.virtual_time import run_virtual

MS = 1e-3


def within(latency: float, budget_ms: float) -> bool:
    """Within the budget, up to the float rounding of the virtual clock."""
    return latency <= budget_ms * MS + 1e-9


class FakeDevice:
    """A batch function taking `fixed_ms + per_image_ms * n` of virtual time,
    one batch at a time (a device); `slow` makes chosen batches outliers."""

    def __init__(self, fixed_ms: float = 20, per_image_ms: float = 2, lanes: int = 1):
        self.fixed_ms = fixed_ms
        self.per_image_ms = per_image_ms
        self.batches: list[tuple[float, list]] = []
        self.slow: dict[int, float] = {}
        self._lanes = asyncio.Semaphore(lanes)

    def seconds(self, size: int) -> float:
        return (self.fixed_ms + self.per_image_ms * size) * MS

    async def __call__(self, items):
        async with self._lanes:
            loop = asyncio.get_running_loop()
            index = len(self.batches)
            self.batches.append((loop.time(), list(items)))
            await asyncio.sleep(self.slow.get(index, self.seconds(len(items))))
        return [f"r{x}" for x in items]

    def sizes(self, since: float = -1.0, until: float = float("inf")) -> list[int]:
        return [len(items) for start, items in self.batches if since <= start < until]


def budgeted(device: FakeDevice, *, budget_ms: float = 100, max_batch_size: int = 32, parallel: int = 1,
             slots: int | None = None, prior_sizes=(1, 32), rate: float = 0.0) -> DynamicBatcher:
    """A started batcher with a budget; the curve primed at `prior_sizes` (CPU warm-up runs 1 and the maximum)."""
    curve = ComputeTimeCurve()
    for size in prior_sizes:
        curve.add_prior(size, device.seconds(size))
    arrivals = ArrivalRate(time_constant=0.5)
    if rate:
        arrivals.record(asyncio.get_running_loop().time(), rate * arrivals.time_constant)
    policy = LatencyBudget(budget_ms * MS, curve=curve, arrivals=arrivals, parallel=parallel, margin=0.0)
    batcher = DynamicBatcher(device, max_batch_size=max_batch_size, max_delay=0.0, max_queue_size=1000,
                             max_concurrent_batches=slots or parallel, name="m", latency_budget=policy)
    batcher.start()
    return batcher


@dataclass
class Outcome:
    sent: float
    done: float
    result: ItemResult | ServiceError

    @property
    def answered(self) -> bool:
        return isinstance(self.result, ItemResult)

    @property
    def latency(self) -> float:
        return self.done - self.sent


async def offer(batcher: DynamicBatcher, times: list[float], *, deadline_ms: float | None = None) -> list[Outcome]:
    """Submit one single-item request at each virtual time in `times` (seconds from now)."""
    loop = asyncio.get_running_loop()
    base = loop.time()

    async def one(index: int, at: float) -> Outcome:
        await asyncio.sleep(base + at - loop.time())
        sent = loop.time()
        deadline = None if deadline_ms is None else sent + deadline_ms * MS
        try:
            (result,) = await batcher.submit([index], deadline=deadline)
        except ServiceError as exc:
            result = exc
        return Outcome(sent - base, loop.time() - base, result)

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(times))))


def steady(rate: float, start: float, stop: float) -> list[float]:
    """Arrival times `rate` per second from `start` to `stop`."""
    count = round((stop - start) * rate)
    return [start + i / rate for i in range(count)]


def test_without_a_budget_there_is_no_budget_status():
    async def main():
        b = DynamicBatcher(FakeDevice(), max_batch_size=4, max_delay=0.0, max_queue_size=4)
        b.start()
        status = b.budget_status()
        await b.close()
        return status

    assert run_virtual(main()) is None


def test_a_batch_closes_early_when_its_oldest_would_miss_the_budget():
    async def main():
        device = FakeDevice()
        # The stream was busy (1,000 items/s): the batch aims for 15 items,
        # the most the budget allows, but only three come.
        b = budgeted(device, rate=1000)
        base = asyncio.get_running_loop().time()
        out = await offer(b, [0.0, 0.001, 0.002])
        await b.close()
        return device, out, base

    device, out, base = run_virtual(main())
    ((start, items),) = device.batches
    # It waits while a fourth item could still come in time for a batch of
    # 4 (28 ms) to end by the oldest's budget: until 100 - 28 = 72 ms.
    assert items == [0, 1, 2] and start - base == pytest.approx(0.072)
    assert out[0].latency == pytest.approx(0.072 + 0.026)
    assert all(o.answered and within(o.latency, 100) for o in out)


def test_batches_grow_under_load_and_shrink_back_when_it_falls():
    async def main():
        device = FakeDevice()
        b = budgeted(device)
        times = steady(20, 0, 2) + steady(150, 2, 4) + steady(20, 4, 7)
        out = await offer(b, times)
        status = b.budget_status()
        await b.close()
        return device, out, status

    device, out, status = run_virtual(main())
    base = device.batches[0][0]
    light, heavy, light_again = (device.sizes(base + a, base + z) for a, z in ((0.5, 2), (2.5, 4), (5.5, 7)))
    assert set(light) == {1} and set(light_again) == {1}
    assert 4 <= sum(heavy) / len(heavy) <= 8
    assert all(o.answered and within(o.latency, 100) for o in out)
    # At low load a lone request does not wait for company.
    assert all(o.result.queue_seconds == 0 for o in out if o.sent >= 5.5)
    assert status.refused == 0 and status.missed == 0 and status.dropped_over_budget == 0


def test_admission_refuses_at_once_what_cannot_make_the_budget_and_admits_again_after():
    async def main():
        device = FakeDevice()
        b = budgeted(device, budget_ms=101)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        outcomes = await asyncio.gather(*(b.submit([i]) for i in range(40)), return_exceptions=True)
        hint = next(o for o in outcomes if isinstance(o, OverBudgetError)).retry_after
        await asyncio.sleep(t0 + hint + 0.001 - loop.time())
        retried = await b.submit(["retry"])
        status = b.budget_status()
        await b.close()
        return device, outcomes, hint, retried, status

    device, outcomes, hint, retried, status = run_virtual(main())
    # Under load a batch may take half the budget: 15 images (50 ms). Two
    # such batches end by 100 ms; a third would not.
    refused = [o for o in outcomes if isinstance(o, OverBudgetError)]
    assert sum(isinstance(o, list) for o in outcomes) == 30 and len(refused) == 10
    assert all(e.code == "UNAVAILABLE" and "latency budget of 101 ms" in e.message and e.retry_after > 0
               for e in refused)
    assert f"retry in {hint * 1000:.0f} ms" in refused[0].message
    assert [len(items) for _, items in device.batches] == [15, 15, 1]
    assert retried[0].value == "rretry"
    assert status.refused == 10


def test_a_refusal_takes_no_time():
    async def main():
        device = FakeDevice()
        b = budgeted(device, budget_ms=101)
        loop = asyncio.get_running_loop()
        running = [asyncio.ensure_future(b.submit([i])) for i in range(30)]
        await asyncio.sleep(0)
        before = loop.time()
        with pytest.raises(OverBudgetError):
            await b.submit(["late"])
        after = loop.time()
        await asyncio.gather(*running)
        await b.close()
        return after - before

    assert run_virtual(main()) == 0


def overloaded(device: FakeDevice, *, seconds: float, rate: float = 600):
    """(outcomes, budget status) of `rate` single-item requests a second for `seconds` on `device`."""
    async def main():
        b = budgeted(device)
        out = await offer(b, steady(rate, 0, seconds))
        status = b.budget_status()
        await b.close()
        return out, status

    return run_virtual(main())


def test_under_sustained_overload_every_answer_is_within_budget():
    # Twice what the device can answer within 100 ms: batches of 15 in
    # 50 ms, 300 images per second.
    out, status = overloaded(FakeDevice(), seconds=4)
    settled = [o for o in out if o.sent >= 1]  # after the arrival rate estimate has caught up
    answered = [o for o in settled if o.answered]
    refused = [o for o in settled if not o.answered]
    assert all(isinstance(o.result, OverBudgetError) and not o.result.dropped and o.latency == 0 for o in refused)
    assert all(within(o.latency, 100) for o in answered)
    assert len(answered) / 3 >= 0.95 * 300
    assert status.missed == 0


class SpreadDevice(FakeDevice):
    """Every `every`-th batch takes `factor` times as long: compute times spread
    the way they do on cores shared with other processes."""

    def __init__(self, every: int = 3, factor: float = 1.6):
        super().__init__()
        self.every, self.factor = every, factor

    def seconds(self, size: int) -> float:
        slow = len(self.batches) % self.every == 0
        return super().seconds(size) * (self.factor if slow else 1.0)


def test_when_compute_times_spread_admission_widens_its_margin_until_answers_are_in_time():
    """The curve's median sits on the fast batches, so a fixed margin would
    admit work that every third (slow) batch finishes late (without the
    learned margin: 1,669 of about 3,000 answers late); late answers widen
    the margin until almost none are."""
    out, status = overloaded(SpreadDevice(), seconds=20)
    settled = [o for o in out if o.sent >= 5]  # after the margin has found its width
    answered = [o for o in settled if o.answered]
    late = [o for o in answered if not within(o.latency, 100)]
    assert status.admission_margin > 0.1  # the base margin and a learned part
    assert len(answered) / 15 >= 150  # of the about 250/s the device can answer in budget, one batch in three slow
    # The margin aims at 0.5% late; here late answers come a whole slow batch at a time.
    assert len(late) <= 0.02 * len(answered), (len(late), len(answered))


def test_a_requests_deadline_tightens_its_budget():
    async def main():
        device = FakeDevice()
        b = budgeted(device, rate=1000)
        # A busy stream, but this request must be answered within 50 ms: its
        # batch closes at 50 - 24 = 26 ms instead of 100 - 24 = 76 ms.
        (early,) = await offer(b, [0.0], deadline_ms=50)
        loop = asyncio.get_running_loop()
        busy = [asyncio.ensure_future(b.submit([i])) for i in range(15)]
        await asyncio.sleep(0)
        # The device is busy for 50 ms: a request with 40 ms to live is refused at once.
        with pytest.raises(OverBudgetError, match=r"budget of 40 ms \(tightened by the request's deadline\)"):
            await b.submit(["tight"], deadline=loop.time() + 0.040)
        await asyncio.gather(*busy)
        await b.close()
        return device, early

    device, early = run_virtual(main())
    assert early.answered and early.latency == pytest.approx(0.026 + 0.022)
    assert [len(items) for _, items in device.batches] == [1, 15]


def test_queued_items_past_their_budget_are_not_run_and_an_outlier_changes_nothing():
    async def main():
        device = FakeDevice()
        device.slow[3] = 1.0  # the fourth batch stalls for a second
        b = budgeted(device)
        out = await offer(b, steady(20, 0, 3))
        status = b.budget_status()
        await b.close()
        return device, out, status

    device, out, status = run_virtual(main())
    stalled = device.batches[3][0] - device.batches[0][0]
    during = [o for o in out if stalled < o.sent < stalled + 1.0 - 0.1]
    after = [o for o in out if o.sent > stalled + 1.0]
    assert during and all(isinstance(o.result, OverBudgetError) for o in during)
    assert all(o.result.message.endswith("retry when the load falls") and o.result.dropped for o in during)
    ran = {x for _, items in device.batches for x in items}
    assert not ran & {out.index(o) for o in during}
    # The curve keeps its median: requests after the stall are admitted and served in budget.
    assert after and all(o.answered and within(o.latency, 100) for o in after)
    assert status.curve[0].seconds == pytest.approx(0.022)
    assert status.dropped_over_budget == len(during)


def test_the_warm_up_prior_shapes_admission_before_any_batch_ran():
    async def burst(prior_sizes):
        device = FakeDevice()
        b = budgeted(device, budget_ms=51, prior_sizes=prior_sizes)
        await asyncio.gather(*(b.submit([i]) for i in range(40)), return_exceptions=True)
        status = b.budget_status()
        await b.close()
        return status.refused, status.dropped_over_budget, [len(items) for _, items in device.batches]

    # With the warm-up's times a batch may take half of 51 ms under load:
    # two images (24 ms); two such batches end by 48 ms, the rest is refused.
    assert run_virtual(burst((1, 32))) == (36, 0, [2, 2])
    # Without a prior nothing can be predicted: everything is admitted, one
    # batch of 32 runs for 84 ms, and the 8 left behind have missed 51 ms.
    assert run_virtual(burst(())) == (0, 8, [32])


def test_a_budget_below_one_image_runs_one_probe_at_a_time_and_refuses_the_rest():
    async def main():
        device = FakeDevice()
        b = budgeted(device, budget_ms=15)
        # The device is idle and nothing waits: the first request runs although
        # predicted late (22 ms), so the curve keeps learning.
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.001)
        with pytest.raises(OverBudgetError, match=r"budget of 15 ms: it would be answered in 43 ms; retry in 28 ms"):
            await b.submit([2])
        await first
        status = b.budget_status()
        await b.close()
        return status.probes, status.refused, status.missed, device.sizes()

    assert run_virtual(main()) == (1, 1, 1, [1])


def test_a_curve_made_too_pessimistic_recovers_through_probes():
    async def main():
        device = FakeDevice()
        curve = ComputeTimeCurve()
        curve.add_prior(1, 0.200)  # a cold warm-up: ten times the real 22 ms
        policy = LatencyBudget(100 * MS, curve=curve, margin=0.0)
        b = DynamicBatcher(device, max_batch_size=8, max_delay=0.0, max_queue_size=100, name="m",
                           latency_budget=policy)
        b.start()
        for i in range(6):
            await b.submit([i])
            await asyncio.sleep(0.05)
        learned = b.budget_status()
        # With the curve learned, a small burst is admitted whole.
        burst = await asyncio.gather(*(b.submit([i]) for i in range(3)), return_exceptions=True)
        await b.close()
        return learned.probes, learned.refused, learned.curve[0].seconds, burst

    probes, refused, seconds, burst = run_virtual(main())
    # The prior counts as four measurements: four probes push the median to the real time.
    assert (probes, refused) == (4, 0) and seconds == pytest.approx(0.022)
    assert all(isinstance(r, list) for r in burst)


def test_a_multi_image_request_is_admitted_or_refused_whole():
    async def main():
        device = FakeDevice()
        b = budgeted(device)
        # 40 images: batches of 15, 15 and 10 end at 140 ms.
        with pytest.raises(OverBudgetError):
            await b.submit(list(range(40)))
        assert b.queue_depth == 0 and not device.batches
        out = await b.submit(list(range(20)))
        await b.close()
        return device, out

    device, out = run_virtual(main())
    assert [r.value for r in out] == [f"r{i}" for i in range(20)]
    assert [len(items) for _, items in device.batches] == [15, 5]


def test_two_lanes_take_twice_the_work():
    async def main():
        device = FakeDevice(lanes=2)
        b = budgeted(device, parallel=2)
        outcomes = await asyncio.gather(*(b.submit([i]) for i in range(70)), return_exceptions=True)
        await b.close()
        return sum(isinstance(o, list) for o in outcomes), sorted(len(items) for _, items in device.batches)

    # Two lanes taking turns: a batch may take 1 / 1.5 of the budget, 23 images (66 ms).
    assert run_virtual(main()) == (46, [23, 23])


def test_a_batch_queued_behind_another_on_the_device_is_timed_from_its_own_start():
    async def main():
        device = FakeDevice()  # one lane, but two batches handed over at once (a pipelined device)
        b = budgeted(device, parallel=1, slots=2, prior_sizes=())
        await asyncio.gather(*(b.submit([i]) for i in range(64)))
        status = b.budget_status()
        await b.close()
        return device, status

    device, status = run_virtual(main())
    assert [len(items) for _, items in device.batches] == [32, 32]
    # The second batch waited 84 ms behind the first: the curve learns 84 ms, not 168.
    (point,) = status.curve
    assert (point.batch_size, point.seconds, point.measured) == (32, pytest.approx(0.084), 2)


def test_the_budget_status_shows_what_was_learned_chosen_and_predicted():
    async def main():
        device = FakeDevice()
        b = budgeted(device, prior_sizes=(1, 2, 4, 8, 16, 32))
        await offer(b, steady(150, 0, 1))
        return b.budget_status(), b

    async def wrapped():
        status, b = await main()
        await b.close()
        return status

    status = run_virtual(wrapped())
    assert status.budget_seconds == pytest.approx(0.1)
    assert [ComputeTimeCurve.bucket(p.batch_size) for p in status.curve] == [0, 1, 2, 3, 4, 5]
    assert sum(p.measured for p in status.curve) == status.batches > 0
    assert status.arrival_rate == pytest.approx(150, rel=0.2)
    # 150 items per second: batches of about 5 keep up (5 in 30 ms, used to 90%).
    assert 4 <= status.target_batch_size <= 6 and status.batch_size_limit == 15 and 1 <= status.last_batch_size <= 8
    # The fake device is exact, so the predicted latency of each batch's oldest item is the actual one.
    assert status.predicted_seconds_sum == pytest.approx(status.actual_seconds_sum)
    assert status.last_predicted_seconds == pytest.approx(status.last_actual_seconds)
    assert status.refused == 0 and status.missed == 0


def test_close_runs_the_items_still_waiting_for_their_batch_to_fill():
    async def main():
        device = FakeDevice()
        b = budgeted(device, rate=1000)
        waiting = [asyncio.ensure_future(b.submit([i])) for i in range(3)]
        await asyncio.sleep(0.010)
        assert not device.batches  # still filling
        await b.close()
        return device, [w.result()[0].value for w in waiting]

    device, values = run_virtual(main())
    assert values == ["r0", "r1", "r2"] and device.batches[0][0] > 0


def test_a_newer_request_of_the_same_stream_supersedes_its_waiting_one():
    async def main():
        device = FakeDevice()
        b = budgeted(device, budget_ms=200)
        # One batch of 8 other requests keeps the device busy for 36 ms.
        busy = [asyncio.ensure_future(b.submit([f"x{i}"])) for i in range(8)]
        await asyncio.sleep(0.001)
        # Frames 1 and 2 of one camera arrive while the device is busy: frame 1
        # still waits for a batch when frame 2 comes, so frame 2 wins.
        frame1 = asyncio.ensure_future(b.submit(["cam-1"], latest_of="cam"))
        await asyncio.sleep(0.001)
        frame2 = asyncio.ensure_future(b.submit(["cam-2"], latest_of="cam"))
        other = asyncio.ensure_future(b.submit(["other-1"], latest_of="other"))
        results = await asyncio.gather(frame1, frame2, other, *busy, return_exceptions=True)
        status = b.budget_status()
        await b.close()
        return results, status.superseded, [x for _, items in device.batches for x in items]

    (frame1, frame2, other, *busy), superseded, ran = run_virtual(main())
    assert isinstance(frame1, SupersededError) and frame1.code == "DEADLINE_EXCEEDED"
    assert frame2[0].value == "rcam-2" and other[0].value == "rother-1" and superseded == 1
    assert "cam-1" not in ran and all(isinstance(r, list) for r in busy)


def test_a_frame_taken_into_a_batch_is_not_superseded():
    async def main():
        device = FakeDevice()
        b = budgeted(device, budget_ms=200)
        frame1 = asyncio.ensure_future(b.submit(["cam-1"], latest_of="cam"))
        await asyncio.sleep(0.001)  # the idle device took frame 1 at once
        frame2 = await b.submit(["cam-2"], latest_of="cam")
        status = b.budget_status()
        await b.close()
        return (await frame1)[0].value, frame2[0].value, status.superseded

    assert run_virtual(main()) == ("rcam-1", "rcam-2", 0)


def test_without_a_budget_latest_of_changes_nothing():
    async def main():
        device = FakeDevice()
        b = DynamicBatcher(device, max_batch_size=4, max_delay=0.01, max_queue_size=10, name="m")
        b.start()
        out = await asyncio.gather(b.submit(["a"], latest_of="cam"), b.submit(["b"], latest_of="cam"))
        await b.close()
        return [r[0].value for r in out]

    assert run_virtual(main()) == ["ra", "rb"]


def test_a_refusal_carries_its_retry_hint_as_trailing_metadata():
    assert OverBudgetError("late", 0.0284).trailers() == (("retry-after-ms", "29"), ("framewire-over-budget", "refused"))
    assert OverBudgetError("late", 0.0, dropped=True).trailers() == (("retry-after-ms", "0"),
                                                                     ("framewire-over-budget", "dropped"))
    assert SupersededError("newer frame").trailers() == ()
