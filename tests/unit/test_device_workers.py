"""Which worker processes a server has per device, and where a version's
instances go (no process is started: processes start with the first load,
tests/integration/test_shared_workers.py runs them)."""

from __future__ import annotations

from framewire.service.config import ServeConfig
from framewire.service.device_workers import DeviceWorkers
from framewire.service.devices import DevicePlan
from framewire.service.runner import BatchingSettings
from framewire.service.worker_runner import ProcessRunner
from framewire.service.worker_settings import WorkerSettings


def test_one_process_per_gpu_whatever_the_instances_asked():
    workers = DeviceWorkers.for_plan(DevicePlan(("cuda:0", "cuda:1"), "float16"), ServeConfig(instances_per_device=3))
    assert workers.per_device == 1
    assert {device: [w.index for w in listed] for device, listed in workers.workers.items()} == {
        "cuda:0": [0], "cuda:1": [0]}


def test_the_cpu_keeps_the_instance_plans_processes_and_threads():
    workers = DeviceWorkers.for_plan(DevicePlan(("cpu",), "float32"), ServeConfig(instances_per_device=2, cpu_threads=1))
    assert (workers.per_device, workers.threads) == (2, 1)
    assert len(workers.workers["cpu"]) == 2


def test_a_version_goes_to_the_workers_hosting_the_fewest_versions():
    workers = DeviceWorkers(("cpu",), 3, 1)
    first, second, third = workers.workers["cpu"]
    first.hosted += ["a", "b"]
    third.hosted += ["a"]
    assert workers.place("cpu", 1) == [second]
    assert workers.place("cpu", 2) == [second, third]
    assert workers.place("cpu", 5) == [first, second, third]  # at most one instance per process


def runner(workers, instances: int) -> ProcessRunner:
    settings = [WorkerSettings(model_id="m:1#1", artifact="m.fwa", device="cpu")]
    batching = BatchingSettings(max_batch_size=8, max_delay=0.002, max_queue_size=64)
    return ProcessRunner(None, settings, instances_per_device=instances, batching=batching, name="m:1",
                         workers=workers)


def test_a_runners_instances_are_its_models_in_the_shared_processes():
    workers = DeviceWorkers(("cpu",), 2, 1)
    one, other = runner(workers, 2), runner(workers, 4)
    assert one.instance_count == other.instance_count == 2  # capped by the processes the device has
    assert [p.shared for p in one.processes] == [p.shared for p in other.processes] == workers.workers["cpu"]
    assert not any(p.alive() for p in one.processes)  # nothing is loaded until `load`
    assert one.pids() == set()


def test_without_the_servers_workers_each_instance_has_a_process_of_its_own():
    alone = runner(None, 2)
    assert alone.instance_count == 2
    assert len({id(p.shared) for p in alone.processes}) == 2
