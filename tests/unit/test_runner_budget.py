"""How a runner sets up its latency budget (no process is started: the
workers start in `load`, which these tests do not call)."""

from __future__ import annotations

import pytest

from framewire.service.runner import BatchingSettings
from framewire.service.worker_runner import ProcessRunner
from framewire.service.worker_settings import WorkerSettings


def runner(*, devices: int, instances: int, depth: int, budget: float | None) -> ProcessRunner:
    settings = [WorkerSettings(model_id=f"m:1@{d}", artifact="m.fwa", device=f"cuda:{d}") for d in range(devices)]
    batching = BatchingSettings(max_batch_size=8, max_delay=0.002, max_queue_size=64, pipeline_depth=depth,
                                latency_budget=budget)
    return ProcessRunner(None, settings, instances_per_device=instances, batching=batching, name="m:1")


@pytest.mark.parametrize("devices, instances, depth", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 2, 0)])
def test_the_budgets_lanes_are_the_instances_not_the_batches_formed_ahead(devices, instances, depth):
    budgeted = runner(devices=devices, instances=instances, depth=depth, budget=0.02)
    assert budgeted.latency_budget.parallel == devices * instances
    assert budgeted.latency_budget.seconds == 0.02


def test_the_warm_up_times_of_the_fastest_instance_are_the_prior():
    budgeted = runner(devices=1, instances=2, depth=0, budget=0.1)
    budgeted._warmed({1: 0.030, 8: 0.090})
    budgeted._warmed({"1": 0.020, "8": 0.120})  # as a worker's JSON reply says it
    budgeted._prime_budget()
    assert budgeted.latency_budget.curve.seconds(1) == pytest.approx(0.020)
    assert budgeted.latency_budget.curve.seconds(8) == pytest.approx(0.090)


def test_without_a_budget_there_is_no_policy():
    plain = runner(devices=1, instances=1, depth=0, budget=None)
    assert plain.latency_budget is None and plain.budget_status() is None
