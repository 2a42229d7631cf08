"""A served model version: admission of images, its runner, its stats.

The front end's part of a request: each image's header is checked by the
model's task handler (`admit`: format, size and pixel limits, EXIF
orientation; no pixel is decoded) and becomes a compact payload; the
runner batches, decodes and runs them next to the device and answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from framewire.exporter import format as fmt
from framewire.exporter import parse_artifact
from framewire.exporter.errors import ArtifactIdentityError
from framewire.exporter.loader import read_artifact_bytes
from framewire.v1 import artifact_pb2 as pb

from .batcher import BatchRecord
from .config import ServeConfig, instance_plan
from .device_workers import DeviceWorkers
from .devices import DevicePlan
from .domain import ImageInput, PredictParams, Served
from .load_budget import LoadBudget
from .metrics import ServerMetrics
from .model_view import ModelView
from .runner import BatchingSettings, BatchItem, Runner, ThreadRunner, WorkerStatus
from .stats import ModelStats
from .tasks import task_handler
from .worker_runner import ProcessRunner
from .worker_settings import WorkerSettings

log = logging.getLogger("framewire.model")

#: Numbers each load, so two loads of one version (a changed file reloaded
#: while the old copy serves) are two models to the worker hosting both.
_loads = itertools.count(1)

#: Requests with more images than this have their headers checked off the event loop.
INLINE_ADMISSION = 4


class ServedModel:
    """One model version, from image bytes to predictions."""

    def __init__(self, artifact: pb.ModelArtifact, path: str, runner: Runner, config: ServeConfig, *,
                 on_cuda: bool = False, metrics: ServerMetrics | None = None, admission_pool: Executor | None = None):
        self.name = artifact.name
        self.version = artifact.version
        self.path = path
        self.artifact = artifact
        self.task = fmt.TASK_NAMES[artifact.task]
        self.handler = runner.handler
        self.labels = list(artifact.output.labels)
        self.spec = self.handler.spec
        self.config = config
        self.max_batch_size = min(config.max_batch_size, artifact.input.max_batch)
        self.stats = ModelStats()
        self.metrics = metrics
        self.runner = runner
        self.on_cuda = on_cuda
        self._admission_pool = admission_pool
        runner.on_batch = self._record_batch
        #: What the servicers see of this version (read-only).
        self.view = ModelView(self)

    def _record_batch(self, record: BatchRecord) -> None:
        self.stats.record_batch(record)
        if self.metrics is not None and not record.failed:
            self.metrics.batch(self.name, self.version, record.size, record.compute_seconds)

    @property
    def device(self) -> str:
        return self.runner.device_label

    @property
    def dtype_name(self) -> str:
        """The dtype the network runs in."""
        return self.runner.dtype_name

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch."""
        return self.runner.queue_depth

    @property
    def queue_capacity(self) -> int:
        """Images the queue holds at most (--max-queue-size)."""
        return self.runner.batching.max_queue_size

    @property
    def budget_status(self):
        """The latency budget's BudgetStatus (None without a budget)."""
        return self.runner.budget_status()

    @property
    def payload_bytes(self) -> int:
        """Bytes of image payloads shipped to the device side since load."""
        return self.runner.payload_bytes

    @property
    def device_forwards(self) -> float:
        """Forward passes that ran this version's images (see Runner.device_forwards)."""
        return self.runner.device_forwards

    def workers(self) -> list[WorkerStatus]:
        """Where its instances run: each worker process (pid, state, restarts), or
        this process for each instance with --runner thread."""
        return self.runner.workers()

    def pids(self) -> set[int]:
        """Process ids of its running workers."""
        return self.runner.pids()

    def load(self) -> None:
        """Load the network on every instance (blocking; starts worker processes)."""
        self.runner.load()

    def warm_up(self) -> None:
        """Run the batch sizes this model will see once each, through decode,
        preprocessing and the network (blocking; nothing with --no-warmup)."""
        sizes = self.handler.warmup_sizes(self.max_batch_size, self.on_cuda) if self.config.warmup else []
        self.runner.warm_up(sizes)

    def unload(self) -> None:
        """Release what `load` placed, without draining (blocking; for a
        version that failed before taking traffic)."""
        self.runner.release()

    def start(self) -> None:
        """Take traffic (from the event loop, after load and warm-up)."""
        self.runner.start()

    async def close(self, *, drain: bool = True) -> None:
        await self.runner.close(drain=drain)
        if self.metrics is not None:
            self.metrics.forget(self.name, self.version)

    async def predict(
        self,
        images: list[ImageInput],
        params: PredictParams,
        *,
        deadline: float | None = None,
        priority: int = 0,
        latest_of: Any = None,
    ) -> Served:
        """Check, batch, decode, run and answer `images`, answers in order."""
        started = time.perf_counter()
        try:
            if len(images) > INLINE_ADMISSION and self._admission_pool is not None:
                items = await asyncio.get_running_loop().run_in_executor(
                    self._admission_pool, self._admit_all, images, params)
            else:
                items = self._admit_all(images, params)
            admitted = time.perf_counter() - started
            results = await self.runner.submit(items, deadline=deadline, priority=priority, latest_of=latest_of)
        except BaseException:
            self.stats.record_request(False, time.perf_counter() - started)
            raise
        answers = [r.value for r in results]
        device_preprocess = max(a.preprocess_seconds for a in answers)
        served = Served(
            model=self.name,
            version=self.version,
            device=self.device,
            predictions=[a.prediction for a in answers],
            preprocess_seconds=admitted + device_preprocess,
            queue_seconds=max(r.queue_seconds for r in results),
            compute_seconds=max(max(r.compute_seconds for r in results) - device_preprocess, 0.0),
            batch_size=max(r.batch_size for r in results),
        )
        self.stats.record_request(True, time.perf_counter() - started, preprocess=served.preprocess_seconds,
                                  queue=served.queue_seconds, compute=served.compute_seconds)
        if self.metrics is not None:
            self.metrics.served(self.name, self.version, preprocess=served.preprocess_seconds,
                                queue=served.queue_seconds)
        return served

    def _admit_all(self, images: list[ImageInput], params: PredictParams) -> list[BatchItem]:
        limits = self.config
        items = []
        for image in images:
            payload, geometry = self.handler.admit(image, max_pixels=limits.max_image_pixels,
                                                   max_bytes=limits.max_image_bytes)
            items.append(BatchItem(payload, geometry, params))
        return items


def build_served_model(path, config: ServeConfig, plan: DevicePlan, metrics: ServerMetrics | None = None,
                       trust=None, admission_pool: Executor | None = None,
                       budget: LoadBudget | None = None, workers: DeviceWorkers | None = None) -> ServedModel:
    """Read an artifact and give it a runner: worker processes (`--runner
    process`; the server's `workers`, shared with its other versions, or
    processes of its own without them) or instances in this process
    (`--runner thread`). Nothing is loaded onto a device yet
    (`ServedModel.load`). `trust` (a TrustPolicy) checks its signature, in
    the worker too. `budget` bounds the load (by default
    --load-timeout-seconds from now); the version is the bytes read here: a
    worker, a restarted one too, refuses any other."""
    instances, threads = instance_plan(config, plan.on_cuda)
    if workers is not None and config.runner == "process":
        # Intra-op threads are process-wide in a worker: the workers' own plan's.
        if instances > workers.per_device:
            log.info("%s: %d instances per device asked; %s has %d worker process(es), one instance in each",
                     path, instances, plan.label, workers.per_device)
        instances, threads = min(instances, workers.per_device), workers.threads
    config = dataclasses.replace(config, instances_per_device=instances, cpu_threads=threads)
    budget = budget or LoadBudget(config.load_timeout_seconds)
    data = read_artifact_bytes(path, max_bytes=config.max_artifact_bytes)
    artifact = parse_artifact(data, str(path), trust=trust)
    check_served_identity(artifact, Path(path), config)
    file_sha256 = hashlib.sha256(data).hexdigest()
    # The front end keeps the artifact's description; the weights live next to the device.
    artifact.ClearField("weights")
    if artifact.WhichOneof("architecture") == "graph":
        artifact.graph.ClearField("program_json")
    handler = task_handler(artifact)
    name = f"{artifact.name}:{artifact.version}"
    model_id = f"{name}#{next(_loads)}"
    settings = [WorkerSettings.from_config(config, model_id=model_id, artifact=str(path), device=device, dtype=plan.dtype,
                                           expect_sha256=file_sha256) for device in plan.devices]
    batching = BatchingSettings.from_config(config, max_batch_size=min(config.max_batch_size, artifact.input.max_batch),
                                            on_cuda=plan.on_cuda)
    if config.runner == "thread":
        runner = ThreadRunner(handler, settings, instances_per_device=instances, batching=batching, data=data,
                              budget=budget, trust=trust, name=name)
    else:
        del data
        runner = ProcessRunner(handler, settings, instances_per_device=instances, batching=batching, name=name,
                               load_timeout=config.load_timeout_seconds, load_budget=budget, workers=workers)
    return ServedModel(artifact, str(path), runner, config, on_cuda=plan.on_cuda, metrics=metrics,
                       admission_pool=admission_pool)


def check_served_identity(artifact: pb.ModelArtifact, path: Path, config: ServeConfig) -> None:
    """An artifact is served only as the model and version it records (and,
    signed, was signed as): one copied to another <model>/<version>/ path, a
    replay or a rollback, is an ArtifactIdentityError, unless the operator
    passed --serve-path-identity (never with --require-signed)."""
    name, version = path.parent.parent.name, path.parent.name
    if (artifact.name, str(artifact.version)) == (name, version):
        return
    recorded = "signed as" if artifact.signature.signature else "records"
    said = (f"the artifact {recorded} model {artifact.name!r} version {artifact.version}, but its path says "
            f"model {name!r} version {version}")
    if config.require_signed:
        raise ArtifactIdentityError(
            f"{said}; with --require-signed an artifact is served only as the name and version it was signed "
            f"with: put it at <repo>/{artifact.name}/{artifact.version}/, or export and sign it as {name} "
            f"version {version}", path)
    if not config.serve_path_identity:
        raise ArtifactIdentityError(
            f"{said}; put it at <repo>/{artifact.name}/{artifact.version}/, re-export it as {name} version "
            f"{version}, or pass --serve-path-identity to serve it as its path says", path)
    log.warning("%s: %s; serving it as its path says (--serve-path-identity)", path, said)
