"""Runners: where a model version's batches are formed and run.

The declared interface (`Runner`) is all the model path and the servicers
use: `load` the network on every instance (blocking; a separate step from
`warm_up`), `start` taking traffic, `submit` one request's items and get
their results in order, `queue_depth`, `pids`, `close`. Each batch is
reported to `on_batch` (statistics and metrics). Where a batch is formed
is the runner's own business: both runners here form them in this process
with a `DynamicBatcher` (`BatchedRunner`); a runner that batches next to
the device keeps the same interface.

* `ThreadRunner` (`--runner thread`): instances of the network in this
  process, one thread each.
* `ProcessRunner` (`--runner process`, in `worker_runner`): instances in
  worker processes, fed through shared memory.

An item is a `BatchItem`: the image's compact `Payload` and what is needed
to answer it (geometry, params). Its result is an `Answer`, or the error of
that image alone (one that does not decode fails its own request only).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from .batcher import BatchRecord, DynamicBatcher, ItemResult
from .latency_budget import BudgetStatus, LatencyBudget
from .device_model import BatchOutcome, DeviceModel, load_network
from .domain import ImagePrediction, PredictParams
from .payloads import Payload, gather
from .preprocess import Geometry

log = logging.getLogger("framewire.runner")


@dataclass(frozen=True)
class BatchItem:
    """One image of a request, on its way to a batch."""

    payload: Payload
    geometry: Geometry
    params: PredictParams


@dataclass(frozen=True)
class WorkerStatus:
    """One instance of a model as operators see it.

    `state` is "running", "in process" (an instance inside the server
    process: `--runner thread`), "starting" (loading and warming up),
    "restarting" (a worker process that died, to be started again while the
    others serve) or "stopped"; `restarts`
    counts how often its process was started again after dying.
    """

    instance: int
    device: str
    state: str
    pid: int = 0
    restarts: int = 0


@dataclass(frozen=True)
class Answer:
    """One image's prediction, and the device-side time of its batch."""

    prediction: ImagePrediction
    preprocess_seconds: float
    compute_seconds: float


class Runner(Protocol):
    """The declared runner interface; see the module doc."""

    name: str
    handler: Any
    device_label: str
    dtype_name: str
    instance_count: int
    #: Called with a BatchRecord after every batch (statistics, metrics).
    on_batch: Callable[[BatchRecord], None] | None
    #: Called with a reason when the version can no longer be served from the
    #: bytes it was loaded from (a restarted worker found its file changed).
    on_stale: Callable[[str], None] | None

    @property
    def queue_depth(self) -> int: ...

    @property
    def payload_bytes(self) -> int:
        """Bytes of image payloads shipped to the device side since load
        (shared memory with worker processes)."""

    @property
    def device_forwards(self) -> float:
        """Forward passes on the device that ran this version's batches; a
        pass a shared worker merged with other front ends' batches counts as
        this runner's share of it (inferences / device forwards = the
        device's mean batch)."""

    def load(self) -> None:
        """Place the network on every instance (blocking): the only step that
        starts worker processes."""

    def warm_up(self, sizes: list[int]) -> None:
        """Run one batch of each size on every loaded instance (blocking)."""

    def start(self) -> None:
        """Take traffic (from the event loop, after load and warm-up)."""

    async def submit(self, items: Sequence[BatchItem], *, deadline: float | None = None,
                     priority: int = 0, latest_of: Any = None) -> list[ItemResult]: ...

    def pids(self) -> set[int]: ...

    def budget_status(self) -> BudgetStatus | None: ...

    def workers(self) -> list[WorkerStatus]: ...

    def release(self) -> None: ...

    async def close(self, *, drain: bool = True) -> None: ...


@dataclass(frozen=True)
class BatchingSettings:
    """How a runner forms batches (from ServeConfig, per model)."""

    max_batch_size: int
    max_delay: float
    max_queue_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    pipeline_depth: int = 0
    #: Seconds; None batches by `max_delay` (see service/latency_budget.py).
    latency_budget: float | None = None

    @classmethod
    def from_config(cls, config, *, max_batch_size: int, on_cuda: bool) -> "BatchingSettings":
        depth = config.pipeline_depth if config.pipeline_depth >= 0 else (1 if on_cuda else 0)
        return cls(max_batch_size, config.max_queue_delay, config.max_queue_size,
                   tuple(s for s in config.preferred_batch_sizes if s <= max_batch_size), depth,
                   config.latency_budget)


def answers(handler, outcome: BatchOutcome, items: Sequence[BatchItem]) -> list:
    """One Answer per item of a batch, or the item's own error."""
    results: list[Any] = [outcome.errors.get(row) for row in range(len(items))]
    if outcome.rows:
        chosen = [items[r] for r in outcome.rows]
        predictions = handler.answer(outcome.output, [i.geometry for i in chosen], [i.params for i in chosen])
        for row, prediction in zip(outcome.rows, predictions):
            results[row] = Answer(prediction, outcome.preprocess_seconds, outcome.compute_seconds)
    return results


class BatchedRunner:
    """A runner that forms batches in this process; subclasses run them (`_run_batch`).

    With a latency budget, the batcher gets a `LatencyBudget` whose lanes are
    the model's instances (`lanes`; batches formed ahead by `pipeline_depth`
    wait for one); the warm-up's compute time per batch size, the fastest instance's,
    is its prior. One curve per runner: a runner spread over several devices
    of one kind learns one curve for all of them.
    """

    def __init__(self, name: str, handler, batching: BatchingSettings, *, concurrent_batches: int,
                 on_batch: Callable[[BatchRecord], None] | None = None, lanes: int | None = None):
        self.name = name
        self.handler = handler
        self.batching = batching
        self.on_batch = on_batch
        self._batches_run = 0
        #: Warm-up compute seconds per batch size, one per instance (the budget's prior).
        self.warm_seconds: dict[int, list[float]] = {}
        self.latency_budget = None
        if batching.latency_budget is not None:
            lanes = lanes if lanes is not None else concurrent_batches - batching.pipeline_depth
            self.latency_budget = LatencyBudget(batching.latency_budget, parallel=max(1, lanes))
        self._batcher = DynamicBatcher(
            self._run_batch, max_batch_size=batching.max_batch_size, max_delay=batching.max_delay,
            max_queue_size=batching.max_queue_size, max_concurrent_batches=concurrent_batches,
            preferred_batch_sizes=batching.preferred_batch_sizes, name=name, on_batch=self._report,
            latency_budget=self.latency_budget,
        )

    def _warmed(self, seconds: dict) -> None:
        """Note one instance's warm-up compute times ({batch size: seconds})."""
        for size, value in seconds.items():
            self.warm_seconds.setdefault(int(size), []).append(float(value))

    def _report(self, record: BatchRecord) -> None:
        if not record.failed:
            self._batches_run += 1
        if self.on_batch is not None:
            self.on_batch(record)

    @property
    def device_forwards(self) -> float:
        """Batches run (each one forward pass; see Runner.device_forwards)."""
        return float(self._batches_run)

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch."""
        return self._batcher.queue_depth

    def start(self) -> None:
        """Start forming batches (call from the event loop, after `load`)."""
        self._prime_budget()
        self._batcher.start()

    def _prime_budget(self) -> None:
        """The warm-up's times, the fastest instance's per size, as the curve's prior."""
        if self.latency_budget is not None:
            for size, values in sorted(self.warm_seconds.items()):
                self.latency_budget.curve.add_prior(size, min(values))

    def budget_status(self) -> BudgetStatus | None:
        """The latency budget's state (None without one)."""
        return self._batcher.budget_status()

    async def submit(self, items: Sequence[BatchItem], *, deadline: float | None = None,
                     priority: int = 0, latest_of: Any = None) -> list[ItemResult]:
        """Queue a request's items; their results in order (values are Answers).
        `latest_of`: see DynamicBatcher.submit (latest-frame-wins per stream)."""
        return await self._batcher.submit(items, deadline=deadline, priority=priority, latest_of=latest_of)

    async def close(self, *, drain: bool = True) -> None:
        """Stop taking items, run (drain) or fail the queued ones, then release the instances."""
        await self._batcher.close(drain=drain)
        await asyncio.get_running_loop().run_in_executor(None, self.release)

    async def _run_batch(self, items: list[BatchItem]) -> list:
        raise NotImplementedError

    def release(self) -> None:
        """Release the instances (blocking); `close` calls it once drained."""
        raise NotImplementedError


class _Instance:
    """One DeviceModel with the thread it runs on."""

    def __init__(self, model: DeviceModel, index: int):
        self.model = model
        self.device = model.device
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"instance-{model.device}-{index}")


class ThreadRunner(BatchedRunner):
    """Instances of the network in this process (`--runner thread`).

    `settings` holds one WorkerSettings per device; `data` is the artifact's
    bytes as the front end read them. A load that hangs could not be stopped
    in this process, so `load` first rebuilds the network once in a child
    process under the budget, from the same bytes. On CUDA a batch is decoded
    and staged on a side stream before an instance is free, so it overlaps
    the previous batch's compute (pipeline depth 1).
    """

    def __init__(self, handler, settings: list, *, instances_per_device: int, batching: BatchingSettings,
                 data: bytes, budget, on_batch=None, trust=None, name: str = "model"):
        super().__init__(name, handler, batching, on_batch=on_batch,
                         concurrent_batches=len(settings) * instances_per_device + batching.pipeline_depth)
        first = settings[0]
        self.settings = settings
        self.instances_per_device = instances_per_device
        self.instance_count = len(settings) * instances_per_device
        self.device_label = ",".join(s.device for s in settings)
        self.dtype_name = first.dtype
        self.trust = trust
        #: Never called: in-process instances are never reloaded from the file.
        self.on_stale: Callable[[str], None] | None = None
        self.payload_bytes = 0
        self._data = data
        self._budget = budget
        self.instances: list[_Instance] = []
        self._decode_pool = ThreadPoolExecutor(max_workers=first.decode_threads or min(8, os.cpu_count() or 1),
                                               thread_name_prefix="decode")
        self._stage_pool = ThreadPoolExecutor(max_workers=len(settings), thread_name_prefix="stage")
        self._free: dict[Any, asyncio.Queue] = {}
        self._busy: dict[Any, int] = {}

    def load(self) -> None:
        """Load the artifact and place an instance per device and per `instances_per_device`."""
        from framewire.exporter import ArtifactError
        from framewire.exporter.child_load import load_in_child
        from framewire.exporter.errors import ArtifactLoadTimeoutError

        first, budget = self.settings[0], self._budget
        try:
            load_in_child(self._data, first.artifact, timeout=budget.remaining(), max_bytes=first.max_artifact_bytes,
                          trusted_keys=first.trusted_keys, require_signed=first.require_signed, watch=budget.watch)
        except ArtifactError:
            why = budget.failure()
            if why is not None:
                raise ArtifactLoadTimeoutError(why, first.artifact) from None
            raise
        loaded = load_network(first, trust=self.trust, data=self._data)
        self._data = None
        for device_settings in self.settings:
            for i in range(self.instances_per_device):
                module = loaded.module if not self.instances else copy.deepcopy(loaded.module)
                model = DeviceModel(module, self.handler, device_settings, self._decode_pool, name=self.name)
                self.instances.append(_Instance(model, i))

    def warm_up(self, sizes: list[int]) -> None:
        for instance in self.instances:
            self._warmed(instance.model.warm_up(sizes))

    def start(self) -> None:
        for instance in self.instances:
            self._free.setdefault(instance.device, asyncio.Queue()).put_nowait(instance)
            self._busy.setdefault(instance.device, 0)
        super().start()

    async def _run_batch(self, items: list[BatchItem]) -> list:
        loop = asyncio.get_running_loop()
        batch = gather([item.payload for item in items])
        self.payload_bytes += sum(item.payload.nbytes for item in items)
        device = min(self._free, key=lambda d: self._busy[d])
        self._busy[device] += 1
        try:
            prepared = None
            if device.type == "cuda":
                stager = next(i.model for i in self.instances if i.device == device)
                prepared = await loop.run_in_executor(self._stage_pool, stager.prepare, batch)
            instance = await self._free[device].get()
            try:
                return await loop.run_in_executor(instance.executor, self._run_on, instance, batch, prepared, items)
            finally:
                self._free[device].put_nowait(instance)
        finally:
            self._busy[device] -= 1

    def _run_on(self, instance: _Instance, batch, prepared, items) -> list:
        outcome = instance.model.run(batch) if prepared is None else instance.model.forward(prepared)
        return answers(self.handler, outcome, items)

    def pids(self) -> set[int]:
        """Worker processes (none: instances run in this process)."""
        return set()

    def workers(self) -> list[WorkerStatus]:
        """Every instance: all run inside this process."""
        return [WorkerStatus(instance=n, device=str(i.device), state="in process", pid=os.getpid())
                for n, i in enumerate(self.instances)]

    def release(self) -> None:
        for instance in self.instances:
            instance.executor.shutdown(wait=True)
        self._stage_pool.shutdown(wait=True)
        self._decode_pool.shutdown(wait=True)
        self.instances.clear()
