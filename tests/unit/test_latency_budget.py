"""The latency-budget policy on its own: the learned curve, the arrival rate,
the batch size it aims for, the closing rule and admission, all at made-up
times (the policy takes `now`, so nothing here waits)."""

from __future__ import annotations

import math

import pytest

from framewire.service.compute_curve import ComputeTimeCurve
from framewire.service.latency_budget import (CALM_SECONDS, LATE_TARGET, MARGIN_STEP, MAX_EXTRA_MARGIN, ArrivalRate,
                                              LatencyBudget)

MS = 1e-3


def linear_curve(fixed_ms: float, per_image_ms: float, sizes=(1, 2, 4, 8, 16, 32)) -> ComputeTimeCurve:
    """A curve primed the way warm-up primes it: one measurement per size."""
    curve = ComputeTimeCurve()
    for size in sizes:
        curve.add_prior(size, (fixed_ms + per_image_ms * size) * MS)
    return curve


def policy(budget_ms=100.0, curve=None, rate=0.0, now=0.0, **kw) -> LatencyBudget:
    arrivals = ArrivalRate(time_constant=0.5)
    if rate:
        arrivals.record(now, rate * arrivals.time_constant)
    kw.setdefault("margin", 0.0)
    return LatencyBudget(budget_ms * MS, curve=curve or linear_curve(20, 2), arrivals=arrivals, **kw)


# ------------------------------------------------------------------ the curve

def test_an_empty_curve_predicts_nothing():
    assert ComputeTimeCurve().seconds(4) is None and ComputeTimeCurve().points() == ()


def test_the_curve_interpolates_between_buckets_and_extrapolates_in_proportion():
    curve = ComputeTimeCurve()
    curve.observe(2, 0.010)
    curve.observe(8, 0.040)
    assert curve.seconds(1) == pytest.approx(0.010)  # flat below the smallest point
    assert curve.seconds(5) == pytest.approx(0.025)  # linear between points
    assert curve.seconds(16) == pytest.approx(0.080)  # in proportion above the largest


def test_the_curve_never_falls_with_batch_size():
    curve = ComputeTimeCurve()
    curve.observe(4, 0.030)
    curve.observe(8, 0.020)  # noise: a larger batch measured faster
    curve.observe(16, 0.050)
    seconds = [curve.seconds(n) for n in range(1, 33)]
    assert all(a <= b for a, b in zip(seconds, seconds[1:]))
    assert curve.seconds(8) == pytest.approx(0.030)


def test_one_outlier_does_not_move_a_bucket():
    curve = ComputeTimeCurve()
    for _ in range(5):
        curve.observe(1, 0.010)
    curve.observe(1, 2.0)  # a pause of the whole process
    assert curve.seconds(1) == pytest.approx(0.010)


def test_a_warm_up_prior_counts_as_several_measurements_until_pushed_out():
    curve = ComputeTimeCurve(window=8, prior_weight=4)
    curve.add_prior(1, 0.010)
    curve.observe(1, 0.500)
    assert curve.seconds(1) == pytest.approx(0.010)  # the prior outweighs one measurement
    (point,) = curve.points()
    assert (point.samples, point.measured) == (5, 1)
    for _ in range(8):
        curve.observe(1, 0.030)
    assert curve.seconds(1) == pytest.approx(0.030)  # real measurements win over time
    assert curve.points()[0].measured == 8


def test_sizes_share_power_of_two_buckets():
    assert [ComputeTimeCurve.bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 32)] == [0, 1, 2, 2, 3, 3, 4, 5]
    curve = ComputeTimeCurve()
    curve.observe(5, 0.050)
    curve.observe(8, 0.060)
    curve.observe(7, 0.055)
    (point,) = curve.points()
    assert (point.batch_size, point.seconds) == (7, pytest.approx(0.055))


def test_a_bucket_no_batch_refreshes_is_capped_by_the_fresh_ones_below_it():
    """Under load a batch of 3 measured in a bad moment (60 ms, where batches of
    2 take 20) would cap every batch at 2 for good, since the policy never runs
    a batch of 3 again to learn better. Once `window` batches have gone by
    without refreshing it, it counts no more per image than the fresh buckets
    below it."""
    curve = ComputeTimeCurve(window=8)
    curve.observe(3, 0.060)
    for _ in range(7):
        curve.observe(2, 0.020)
    assert curve.seconds(3) == pytest.approx(0.060)  # still fresh: stands as measured
    curve.observe(2, 0.020)
    assert curve.points()[1].stale
    assert curve.seconds(3) == pytest.approx(0.030)  # 20 ms per 2 images
    assert curve.seconds(6) == pytest.approx(0.060)
    curve.observe(3, 0.045)  # a batch of 3 ran again: its own times count again
    assert not curve.points()[1].stale
    assert curve.seconds(3) == pytest.approx(0.045)


def test_a_stale_bucket_below_its_cap_keeps_its_own_time():
    curve = ComputeTimeCurve(window=4)
    curve.observe(8, 0.050)  # cheaper per image than the cap of 80 ms
    for _ in range(4):
        curve.observe(1, 0.010)
    assert curve.points()[-1].stale
    assert curve.seconds(8) == pytest.approx(0.050)


def test_a_stale_curve_lets_the_budget_allow_larger_batches_again():
    curve = ComputeTimeCurve(window=8)
    curve.observe(4, 0.080)  # measured while the machine was swamped
    budget = LatencyBudget(0.1, curve=curve, margin=0.0)  # one lane: a batch may take half the budget
    for _ in range(7):
        curve.observe(2, 0.020)
    assert budget.size_limit(32) == 3  # 20 ms for 2, 80 ms for 4: 50 ms for 3
    curve.observe(2, 0.020)
    assert budget.size_limit(32) == 5  # 10 ms per image


@pytest.mark.parametrize("size, seconds, message", [
    (0, 0.01, "batch size must be at least 1"),
    (1, -0.01, "finite number of seconds"),
    (1, math.nan, "finite number of seconds"),
])
def test_bad_measurements_are_refused(size, seconds, message):
    with pytest.raises(ValueError, match=message):
        ComputeTimeCurve().observe(size, seconds)


# ----------------------------------------------------------- the arrival rate

def test_the_arrival_rate_follows_a_steady_stream_and_decays_when_it_stops():
    rate = ArrivalRate(time_constant=0.5)
    for i in range(400):  # 200 items per second for two seconds
        rate.record(i * 0.005)
    assert rate.rate(2.0) == pytest.approx(200, rel=0.05)
    assert rate.rate(6.0) < 1


# ---------------------------------------------------- the batch size it aims for

def test_the_target_grows_with_the_arrival_rate_and_shrinks_back():
    targets = [policy(rate=r).target_size(0.0, 32) for r in (10, 100, 150, 250, 1000)]
    assert targets[0] == 1
    assert targets == sorted(targets) and targets[-1] > targets[1] > 1
    assert policy(rate=5).target_size(0.0, 32) == 1


def test_under_overload_the_target_is_the_most_throughput_that_fits_the_budget():
    p = policy(budget_ms=121, rate=10_000)  # far beyond what any size keeps up with
    # 20 ms + 2 ms per image: a batch of 20 takes 60 ms, and the oldest item
    # of the next one waited as long, 120 ms in all.
    assert p.size_limit(32) == 20 and p.target_size(0.0, 32) == 20


def test_more_lanes_allow_larger_batches():
    # With two lanes taking turns the next batch's oldest waited half a batch: 1.5 x 60 ms fits 91 ms.
    assert policy(budget_ms=91, parallel=2).size_limit(32) == 20
    assert policy(budget_ms=91).size_limit(32) < 20


def test_parallel_lanes_need_smaller_batches_for_the_same_rate():
    assert policy(rate=150, parallel=2).target_size(0.0, 32) < policy(rate=150).target_size(0.0, 32)


def test_the_margin_shrinks_what_fits_the_budget():
    assert policy(budget_ms=100, margin=0.5).size_limit(32) < policy(budget_ms=100).size_limit(32)


# ---------------------------------------------------------------- the closing rule

def test_before_any_measurement_a_batch_closes_at_once():
    p = LatencyBudget(0.1, curve=ComputeTimeCurve())
    decision = p.decide(0.0, waiting=3, deadlines=[0.1] * 3, start_at=0.0, max_batch_size=32)
    assert decision.close and decision.size == 3


def test_it_waits_for_the_batch_to_fill_only_until_the_oldest_would_miss():
    p = policy(rate=1000)  # a busy stream: the target is the largest batch, 15
    decision = p.decide(0.0, waiting=3, deadlines=[0.100, 0.101, 0.102], start_at=0.0, max_batch_size=32)
    assert not decision.close
    # The last moment a batch of 4 (28 ms) still finishes by the oldest's deadline.
    assert decision.wait_until == pytest.approx(0.100 - 0.028)
    late = p.decide(0.073, waiting=3, deadlines=[0.100, 0.101, 0.102], start_at=0.073, max_batch_size=32)
    assert late.close and late.size == 3 and late.reason == "no larger batch can fill within the budget"


def test_no_pointless_wait_when_the_next_item_cannot_come_in_time():
    # 20 items per second: the next one is due in 50 ms, too late for a
    # batch of 2 to finish within what is left of a 60 ms budget.
    p = policy(budget_ms=60, rate=20, utilisation=0.01)  # a target above 1 at this rate
    assert p.target_size(0.0, 32) > 1
    decision = p.decide(0.0, waiting=1, deadlines=[0.060], start_at=0.0, max_batch_size=32)
    assert decision.close and decision.size == 1


@pytest.mark.parametrize("waiting, reason", [
    (32, "maximum batch size"),
    (20, "largest batch the budget allows"),
])
def test_a_batch_closes_at_the_maximum_or_at_the_largest_that_fits(waiting, reason):
    p = policy(budget_ms=121, rate=10_000)
    decision = p.decide(0.0, waiting=waiting, deadlines=[0.121] * min(waiting, 32), start_at=0.0,
                        max_batch_size=32)
    assert decision.close and decision.reason == reason and decision.size == 20


def test_a_batch_closes_at_the_target_size():
    p = policy(rate=150)
    target = p.target_size(0.0, 32)
    decision = p.decide(0.0, waiting=target, deadlines=[0.1] * target, start_at=0.0, max_batch_size=32)
    assert decision.close and decision.size == target and decision.reason.startswith("target")


def test_an_item_misses_when_its_batch_would_end_past_its_deadline():
    p = policy()
    # A batch of 5 (30 ms) started at 1 ms ends at 31 ms.
    assert p.misses(0.030, start=0.001, size=5) and not p.misses(0.032, start=0.001, size=5)


# ------------------------------------------------------------------ admission

def test_admission_counts_the_queue_ahead_and_the_busy_lanes():
    p = policy()  # batches of at most 15 (50 ms) under load
    # An idle device: a lone request finishes in 22 ms.
    assert p.admission(0.0, count=1, deadline=0.1, waiting=0, lanes_free_at=[0.0], max_batch_size=32).admitted
    # 40 ahead: two batches of 15 (100 ms), then 11 with it (42 ms): 142 ms, 42 past the budget.
    refused = p.admission(0.0, count=1, deadline=0.1, waiting=40, lanes_free_at=[0.0], max_batch_size=32)
    assert not refused.admitted and refused.retry_after == pytest.approx(0.042)
    assert refused.predicted_finish == pytest.approx(0.142)
    # Two lanes run both batches at once.
    assert p.admission(0.0, count=1, deadline=0.1, waiting=40, lanes_free_at=[0.0, 0.0], max_batch_size=32).admitted


def test_admission_counts_the_items_expected_to_join_its_batch():
    quiet, busy = policy(), policy(rate=500)
    # The lane frees in 60 ms. Alone, the request ends at 82 ms; at 500 items/s
    # its batch fills to 15 (50 ms) meanwhile and ends at 110 ms.
    assert quiet.admission(0.0, count=1, deadline=0.1, waiting=0, lanes_free_at=[0.06], max_batch_size=32).admitted
    refused = busy.admission(0.0, count=1, deadline=0.1, waiting=0, lanes_free_at=[0.06], max_batch_size=32)
    assert not refused.admitted and refused.retry_after == pytest.approx(0.010)
    assert busy.admission(0.0, count=1, deadline=0.1, waiting=0, lanes_free_at=[0.04], max_batch_size=32).admitted


def test_a_request_larger_than_a_batch_spans_batches():
    p = policy()
    # 20 images: a batch of 15 (50 ms) and then one of 5 (30 ms).
    verdict = p.admission(0.0, count=20, deadline=0.1, waiting=0, lanes_free_at=[0.0], max_batch_size=32)
    assert verdict.admitted and verdict.predicted_finish == pytest.approx(0.080)


def test_lanes_are_free_when_their_running_batches_are_predicted_to_end():
    p = policy(parallel=2)
    # Three batches handed over: the third waits for the first lane to free.
    lanes = p.lanes_free_at(0.010, [(0.0, 1), (0.0, 8), (0.005, 1)])
    assert lanes == [pytest.approx(0.036), pytest.approx(0.044)]
    assert p.lanes_free_at(0.5, [(0.0, 1)]) == [0.5, 0.5]


def test_late_outcomes_widen_the_admission_margin_and_punctual_ones_narrow_it():
    budget = policy()
    budget.observe_outcomes(0.0, 90, 10)
    narrow = MARGIN_STEP * LATE_TARGET / (1 - LATE_TARGET)
    assert budget.extra_margin == pytest.approx(10 * MARGIN_STEP - 90 * narrow)
    budget.observe_outcomes(0.1, 100_000, 0)
    assert budget.extra_margin == 0.0  # never below none
    budget.observe_outcomes(0.2, 0, 10_000)
    assert budget.extra_margin == MAX_EXTRA_MARGIN  # nor above the most


def test_the_margin_stands_still_where_the_target_share_is_late():
    budget = policy()
    budget.extra_margin = 0.4
    for n in range(100):
        budget.observe_outcomes(n * 0.1, 995, 5)  # 0.5% late
    assert budget.extra_margin == pytest.approx(0.4)
    for n in range(100, 110):
        budget.observe_outcomes(n * 0.1, 999, 1)  # fewer: it narrows
    assert budget.extra_margin < 0.4


def test_a_margin_widened_by_a_storm_narrows_faster_the_longer_it_is_calm():
    budget = policy()
    budget.observe_outcomes(0.0, 0, 100)  # a cold start into overload: everything late
    assert budget.extra_margin == MAX_EXTRA_MARGIN
    narrow = MARGIN_STEP * LATE_TARGET / (1 - LATE_TARGET)
    budget.observe_outcomes(CALM_SECONDS, 100, 0)  # one calm spell: the settling pace
    assert budget.extra_margin == pytest.approx(MAX_EXTRA_MARGIN - 100 * narrow)
    before = budget.extra_margin
    budget.observe_outcomes(3 * CALM_SECONDS, 100, 0)  # three: nine times as fast
    assert budget.extra_margin == pytest.approx(before - 9 * 100 * narrow)
    for n in range(4, 20):  # 150 answers a second for half a minute, none late
        budget.observe_outcomes(n * CALM_SECONDS, 300, 0)
    assert budget.extra_margin == 0.0


def test_every_prediction_takes_the_learned_margin():
    budget = policy(curve=linear_curve(20, 2))
    lone = dict(count=1, deadline=0.1, waiting=0, lanes_free_at=[0.0], max_batch_size=32)
    assert budget.admission(0.0, **lone).predicted_finish == pytest.approx(0.022)
    assert budget.size_limit(32) == 15 and not budget.misses(0.030, 0.0, 4)
    budget.extra_margin = 0.5
    assert budget.admission(0.0, **lone).predicted_finish == pytest.approx(0.033)
    assert budget.size_limit(32) == 6  # (20 + 2 * 6) ms * 1.5, waited for once more, fits 100 ms
    assert budget.misses(0.030, 0.0, 4)  # 28 ms * 1.5 > 30 ms


def test_an_item_that_cannot_finish_even_alone_is_lost():
    p = policy()
    assert not p.is_lost(0.0, 0.100, start_at=0.0)
    assert p.is_lost(0.0, 0.100, start_at=0.090)  # 22 ms from 90 ms is past 100 ms
    assert p.is_lost(0.100, 0.100, start_at=0.100)


@pytest.mark.parametrize("kwargs, message", [
    ({"seconds": 0}, "positive number of seconds"),
    ({"seconds": 0.1, "parallel": 0}, "parallel"),
    ({"seconds": 0.1, "margin": -1}, "margin"),
    ({"seconds": 0.1, "utilisation": 1.5}, "utilisation"),
])
def test_policy_settings_are_validated_with_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatencyBudget(**kwargs)


def test_the_budget_status_reads_as_milliseconds_and_as_prometheus_families():
    from framewire.service.latency_budget import BudgetStatus
    from framewire.service.metrics import budget_families

    curve = ComputeTimeCurve()
    curve.add_prior(1, 0.010)
    curve.observe(8, 0.030)
    status = BudgetStatus(budget_seconds=0.1, curve=curve.points(), arrival_rate=50.0, target_batch_size=2,
                          batch_size_limit=8, last_batch_size=2, refused=3, probes=1, superseded=4,
                          dropped_over_budget=5, batches=0, predicted_seconds_sum=0.0, actual_seconds_sum=0.0,
                          missed=0, last_predicted_seconds=None, last_actual_seconds=None)
    shown = status.as_dict()
    assert shown["budget_ms"] == 100.0 and shown["mean_predicted_ms"] is None
    assert shown["curve"] == [{"batch_size": 1, "compute_ms": 10.0, "samples": 4, "measured": 0,
                               "stale": False},
                              {"batch_size": 8, "compute_ms": 30.0, "samples": 1, "measured": 1,
                               "stale": False}]
    families = {f.name: f for f in budget_families([(["m", "1"], status)])}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("framewire_latency_budget_seconds", (("model", "m"), ("version", "1")))] == 0.1
    assert samples[("framewire_budget_compute_seconds", (("batch_size", "8"), ("model", "m"), ("version", "1")))] \
        == 0.03
    assert samples[("framewire_budget_refusals_total", (("model", "m"), ("version", "1")))] == 3
    assert samples[("framewire_budget_dropped_total", (("model", "m"), ("reason", "superseded"), ("version", "1")))] \
        == 4
    # No budgeted version: the families are there, empty.
    assert all(not f.samples for f in budget_families([]))
