"""The NVML sampler and the GPU metric families, against a stand-in NVML."""

from __future__ import annotations

import os

from framewire.service.gpu import GpuSampler, load_nvml
from framewire.service.metrics import gpu_families
from support.nvml import FakeGpu, FakeNvml
from support.waiting import wait_until


def test_a_sample_reads_every_figure_in_its_unit():
    nvml = FakeNvml([FakeGpu(processes=[(os.getpid(), 3 * 2**30), (99999999, 5 * 2**30)])])
    (reading,) = GpuSampler(nvml).sample()
    assert (reading.index, reading.name, reading.uuid) == (0, "NVIDIA H200", "GPU-00000000-1111-2222-3333-444444444444")
    assert reading.utilization_percent == 87
    assert (reading.memory_used_bytes, reading.memory_total_bytes) == (40 * 2**30, 141 * 2**30)
    assert reading.process_memory_bytes == 3 * 2**30  # only this server's processes
    assert (reading.power_watts, reading.power_limit_watts) == (512.0, 700.0)
    assert reading.temperature_celsius == 61.0 and reading.sm_clock_hertz == 1.98e9


def test_the_processes_of_the_model_workers_count_too():
    nvml = FakeNvml([FakeGpu(processes=[(10, 2**30), (11, 2**30), (12, 7 * 2**30)])])
    (reading,) = GpuSampler(nvml, pids=lambda: {10, 11}).sample()
    assert reading.process_memory_bytes == 2 * 2**30


def test_host_process_ids_in_a_container_leave_process_memory_out_not_zero():
    # NVML in a container with its own PID namespace lists host pids that do not exist here.
    nvml = FakeNvml([FakeGpu(processes=[(2**22 + 17, 2**30), (2**22 + 18, 2**30)]), FakeGpu(uuid="GPU-2", processes=[])])
    first, second = GpuSampler(nvml, pids=lambda: {os.getpid()}).sample()
    assert first.process_memory_bytes is None
    assert second.process_memory_bytes == 0  # no processes at all: truly nothing held
    families = {f.name: f.samples for f in gpu_families([first])}
    assert families["framewire_gpu_process_memory_bytes"] == [] and families["framewire_gpu_utilization_ratio"]


def test_unsupported_figures_are_left_out_not_fatal():
    nvml = FakeNvml([FakeGpu(unsupported={"power", "power_limit", "clock"}), FakeGpu(name="second", uuid="GPU-2")])
    first, second = GpuSampler(nvml).sample()
    assert first.power_watts is None and first.sm_clock_hertz is None and first.temperature_celsius == 61.0
    assert second.name == "second" and second.power_watts == 512.0


def test_gpu_families_label_each_gpu_and_skip_missing_values():
    nvml = FakeNvml([FakeGpu(unsupported={"power"}), FakeGpu(name="second", uuid="GPU-2", utilization=5)])
    families = {f.name: f for f in gpu_families(GpuSampler(nvml).sample())}
    util = families["framewire_gpu_utilization_ratio"].samples
    assert [(s.labels, s.value) for s in util] == [
        ({"gpu": "0", "name": "NVIDIA H200", "uuid": "GPU-00000000-1111-2222-3333-444444444444"}, 0.87),
        ({"gpu": "1", "name": "second", "uuid": "GPU-2"}, 0.05),
    ]
    assert [s.labels["gpu"] for s in families["framewire_gpu_power_watts"].samples] == ["1"]
    assert families["framewire_gpu_sm_clock_hertz"].samples[0].value == 1.98e9


def test_without_nvml_there_is_nothing_to_sample():
    sampler = GpuSampler(None)
    sampler.start()
    assert not sampler.available and sampler.sample() == [] and sampler.readings == []
    sampler.stop()


def test_loading_nvml_on_a_machine_without_a_driver_does_not_fail():
    nvml = load_nvml()
    assert nvml is None or hasattr(nvml, "nvmlDeviceGetCount")


def test_the_sampler_thread_keeps_sampling():
    nvml = FakeNvml()
    sampler = GpuSampler(nvml, interval=0.01)
    sampler.start()
    first = nvml.calls
    try:
        wait_until(lambda: nvml.calls > first * 3, 5, f"more than {first * 3} NVML calls", interval=0.01)
    finally:
        sampler.stop()
