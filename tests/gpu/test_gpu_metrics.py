"""Real NVML on a real GPU: utilisation under load, and memory that agrees with torch."""

from __future__ import annotations

import threading
import time

import torch

from framewire.client import Client
from framewire.service.gpu import load_nvml
from support.images import encode, random_image
from support.metrics import scrape
from support.server import RunningServer

# What a CUDA context, cuBLAS/cuDNN handles and kernels take beyond torch's caching allocator.
CONTEXT_ALLOWANCE = 3 * 2**30


def by_gpu(samples, name: str) -> dict[str, float]:
    return {s.labels["uuid"]: s.value for s in samples.get(name, [])}


def test_utilisation_rises_under_load_and_memory_agrees_with_torch(demo_repo):
    assert load_nvml() is not None, "CUDA is available but NVML did not start (is nvidia-ml-py installed?)"
    images = [encode(random_image(i, 375, 500), "JPEG") for i in range(32)]
    # The thread runner keeps the model in this process, so torch's own figures are comparable.
    with RunningServer(repo=str(demo_repo), device="cuda", runner="thread", max_batch_size=32,
                       gpu_sample_seconds=0.2) as server:
        stop = threading.Event()

        def load() -> None:
            with Client(server.address) as c:
                while not stop.is_set():
                    c.batch_predict(images, model="efficientnet_lite0")

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        peak, samples = 0.0, {}
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and peak <= 0:
                time.sleep(0.5)
                samples = scrape(server.metrics_url)
                peak = max(by_gpu(samples, "framewire_gpu_utilization_ratio").values(), default=0.0)
            time.sleep(1)  # past warm-up, torch's cache has its steady size
            before = torch.cuda.memory_reserved()
            time.sleep(0.6)  # at least two samples later
            samples = scrape(server.metrics_url)
            after = torch.cuda.memory_reserved()
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    print(f"peak utilisation {peak:.2f}, torch reserved {after / 2**20:.0f} MiB, "
          f"NVML used {by_gpu(samples, 'framewire_gpu_memory_used_bytes')}, "
          f"ours {by_gpu(samples, 'framewire_gpu_process_memory_bytes')}")
    assert 0 < peak <= 1, "NVML never saw the GPU busy during 30 s of load"
    assert after > 0
    used = by_gpu(samples, "framewire_gpu_memory_used_bytes")
    assert max(used.values()) >= min(before, after)  # the device as a whole holds at least what torch holds
    ours = by_gpu(samples, "framewire_gpu_process_memory_bytes")
    # Absent only where NVML lists the host's pids (a container with its own PID namespace).
    for held in ours.values():
        if held > 0:
            assert min(before, after) <= held <= max(before, after) + CONTEXT_ALLOWANCE
    assert any(held > 0 for held in ours.values()) or not ours
