"""Sampling the server once a second into its status document and history.

`StatusSampler` runs in the server's event loop (model stats are only
touched there): each `interval` it gathers a `StatusInputs` from the server
(`gather`), records it in the `StatusHistory` and builds the status document,
kept serialised so HTTP threads and GetServerStatus hand it out as is.
Reading /proc for CPU and memory runs in an executor thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Callable

from framewire import __version__

from .host_figures import HostSampler, ProcessFigures, ProcessRole
from .status_document import build_document
from .status_history import StatusHistory
from .status_inputs import ArtifactFigures, ServerFigures, StatusInputs, VersionFigures

if TYPE_CHECKING:
    from .server import FramewireServer

log = logging.getLogger("framewire.status")

#: The window, in seconds, of the latency percentiles each history sample keeps.
RECENT_LATENCY_SECONDS = 5.0


class StatusSampler:
    """Samples a server every `interval` seconds; see the module doc."""

    def __init__(self, server: "FramewireServer", *, interval: float = 1.0, history: StatusHistory | None = None,
                 host: HostSampler | None = None, clock: Callable[[], float] = time.time):
        self.server = server
        self.interval = interval
        self.history = history or StatusHistory(interval=interval)
        self.host = host or HostSampler()
        self.clock = clock
        self._document = b"{}"
        self._task: asyncio.Task | None = None

    @property
    def document_json(self) -> bytes:
        """The latest status document, serialised (safe from any thread)."""
        return self._document

    def history_json(self) -> bytes:
        """Every history sample held, oldest first, serialised (safe from any thread)."""
        return json.dumps({"interval_seconds": self.interval, "samples": self.history.samples()},
                          separators=(",", ":")).encode()

    async def sample(self) -> dict:
        """Gather, record and build now (in the event loop)."""
        roles = process_roles(self.server)
        host, processes = await asyncio.get_running_loop().run_in_executor(None, self.host.sample, roles)
        # Versions may have become READY (or gone) while /proc was read: the
        # processes' roles are taken again in the same step as everything else,
        # so the document never lists a version on a worker whose role omits it.
        processes = with_roles(processes, process_roles(self.server))
        inputs = gather(self.server, self.clock(), host, tuple(processes))
        sample = self.history.record(inputs)
        document = build_document(inputs, self.history, sample)
        self._document = json.dumps(document, separators=(",", ":")).encode()
        return document

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                await self.sample()
            except Exception:  # a failed sample must never stop the next ones, nor the server
                log.exception("sampling the server's status failed")
            due = max(due + self.interval, loop.time())
            await asyncio.sleep(due - loop.time())


def with_roles(processes: list[ProcessFigures], roles: list[ProcessRole]) -> list[ProcessFigures]:
    """The figures read for each process under its role now; a process that
    is new since the read has no figures yet, one that is gone is left out."""
    read = {p.role.pid: p for p in processes}
    return [dataclasses.replace(read[r.pid], role=r) if r.pid in read else ProcessFigures(r) for r in roles]


def process_roles(server: "FramewireServer") -> list[ProcessRole]:
    """The front end and every worker process that is running, each once
    (a worker hosts several versions: its PSS and CPU count once)."""
    workers: dict[int, ProcessRole] = {}
    for slots in server.repo.models().values():
        for slot in slots:
            if slot.served is None:
                continue
            for w in slot.served.workers():
                if w.state not in ("running", "starting"):
                    continue
                hosted = f"{slot.name}:{slot.version}"
                role = workers.get(w.pid) or ProcessRole(w.pid, "worker", slot.name, slot.version, w.instance)
                if hosted not in role.models:
                    role = dataclasses.replace(role, models=(*role.models, hosted))
                workers[w.pid] = role
    return [ProcessRole(os.getpid(), "front end"), *workers.values()]


def gather(server: "FramewireServer", now: float, host, processes: tuple) -> StatusInputs:
    """What `server` knows now, as plain figures (in the event loop)."""
    plan, state = server.plan, server.state
    figures = ServerFigures(
        version=__version__, uptime_seconds=time.monotonic() - state.started, serving=state.serving,
        devices=plan.devices, dtype=plan.dtype, device_fallback_reason=plan.fallback_reason,
        grpc_port=server.port or 0, metrics_port=state.metrics_port,
    )
    return StatusInputs(
        time=now, server=figures, host=host, processes=processes,
        versions=tuple(version_figures(slot, server.trust is not None)
                       for slots in server.repo.models().values() for slot in slots),
        requests_by_code=requests_by_code(server.metrics.requests),
        gpus=tuple(server.gpu.readings) if server.gpu.available else (),
        gpu_note=gpu_note(server),
    )


def version_figures(slot, trusted_keys: bool) -> VersionFigures:
    """One repository slot's state, and its served model's counters."""
    base = VersionFigures(model=slot.name, version=slot.version, state=slot.state.value, reason=slot.reason,
                          device=slot.device, task=slot.task)
    served = slot.served
    if served is None:
        return base
    stats, artifact = served.stats, served.artifact
    latency = stats.recent_requests.percentiles((50, 99), within=RECENT_LATENCY_SECONDS)
    return dataclasses.replace(
        base, task=served.task, loaded=True,
        artifact=ArtifactFigures(path=served.path, weights_sha256=artifact.weights_sha256.hex(),
                                 signer=artifact.signature.key_id,
                                 signature_checked=trusted_keys and bool(artifact.signature.key_id)),
        queue_depth=served.queue_depth, queue_capacity=served.queue_capacity,
        max_batch_size=served.max_batch_size,
        requests_ok=stats.request_success, requests_failed=stats.request_failure,
        images=stats.inference_count, batches=stats.execution_count,
        timed_requests=stats.request_queue.count, queue_seconds_total=stats.request_queue.seconds,
        compute_seconds_total=stats.request_compute.seconds,
        preprocess_seconds_total=stats.request_preprocess.seconds,
        batch_sizes={size: entry.count for size, entry in stats.by_batch_size.items()},
        minute=stats.recent(),
        recent_latency_p50_ms=None if latency is None else latency[0] * 1000,
        recent_latency_p99_ms=None if latency is None else latency[1] * 1000,
        workers=tuple(served.workers()),
        budget=None if (budget := served.budget_status) is None else budget.as_dict(),
    )


def requests_by_code(counter) -> dict[str, dict[str, int]]:
    """Finished requests by model and gRPC code, from the requests counter."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                codes = counts[sample.labels["model"]]
                codes[sample.labels["code"]] = codes.get(sample.labels["code"], 0) + int(sample.value)
    return dict(counts)


def gpu_note(server: "FramewireServer") -> str:
    """Why the document lists no GPU, or "" when it lists some."""
    if server.gpu.available and server.gpu.readings:
        return ""
    if not server.plan.on_cuda:
        return "no GPU: " + (server.plan.fallback_reason or "the server runs on the CPU (--device cpu)")
    if not server.gpu.available:
        return "no GPU figures: NVML is not available (nvidia-ml-py missing or no driver)"
    return "no GPU figures: NVML lists no GPU"
