"""A served model version: preprocessing, its batcher, its runner, its stats."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from concurrent.futures import Executor
from pathlib import Path

from framewire.exporter import format as fmt
from framewire.exporter import ArtifactError, load_model, parse_artifact
from framewire.exporter.child_load import load_in_child
from framewire.exporter.errors import ArtifactIdentityError, ArtifactLoadTimeoutError
from framewire.exporter.loader import read_artifact_bytes
from framewire.v1 import artifact_pb2 as pb

from . import postprocess
from .batcher import DynamicBatcher, retrieve_exception
from .config import ServeConfig, instance_plan
from .devices import DevicePlan
from .domain import ImageInput, ImagePrediction, PredictParams, Served
from .errors import InvalidInputError
from .load_budget import LoadBudget
from .metrics import ServerMetrics
from .preprocess import Geometry, PreprocessSpec, check_pixels, decode_image, prepare
from .runner import ModelRunner
from .stats import ModelStats
from .worker_runner import ProcessRunner

log = logging.getLogger("framewire.model")

#: Image size used to warm up detection models (they take any size).
DETECTION_WARMUP_SHAPE = (3, 320, 320)


class ServedModel:
    """One model version, from image bytes to predictions."""

    def __init__(self, artifact: pb.ModelArtifact, path: str, runner, config: ServeConfig, plan: DevicePlan,
                 decode_pool: Executor, metrics: ServerMetrics | None = None):
        self.name = artifact.name
        self.version = artifact.version
        self.path = path
        self.artifact = artifact
        self.task = fmt.TASK_NAMES[artifact.task]
        self.labels = list(artifact.output.labels)
        self.spec = PreprocessSpec.from_artifact(artifact)
        self.config = config
        self._decode_pool = decode_pool
        self.max_batch_size = min(config.max_batch_size, artifact.input.max_batch)
        self.stats = ModelStats()
        self.metrics = metrics
        self.runner = runner
        self.on_cuda = plan.on_cuda
        depth = config.pipeline_depth if config.pipeline_depth >= 0 else (1 if plan.on_cuda else 0)
        self.batcher = DynamicBatcher(
            self._run_batch,
            max_batch_size=self.max_batch_size,
            max_delay=config.max_queue_delay,
            max_queue_size=config.max_queue_size,
            max_concurrent_batches=len(self.runner.instances) + depth,
            preferred_batch_sizes=[s for s in config.preferred_batch_sizes if s <= self.max_batch_size],
            name=f"{self.name}:{self.version}",
            on_batch=self._record_batch,
        )

    def _record_batch(self, record) -> None:
        self.stats.record_batch(record)
        if self.metrics is not None and not record.failed:
            self.metrics.batch(self.name, self.version, record.size, record.compute_seconds)

    @property
    def device(self) -> str:
        return self.runner.device_label

    def warm_up(self) -> None:
        """Start the runner and run the batch sizes this model will see, once
        each (blocking; with --no-warmup the runner only starts)."""
        sizes, size = [], 1
        while size < self.max_batch_size:
            sizes.append(size)
            size *= 2
        sizes.append(self.max_batch_size)
        if self.task == "detection":
            sizes, shape = [1, min(2, self.max_batch_size)], DETECTION_WARMUP_SHAPE
        else:
            shape = (self.spec.channels, self.spec.height, self.spec.width)
        if not self.on_cuda:
            sizes = sorted({1, self.max_batch_size})
        self.runner.warm_up(sizes if self.config.warmup else [], shape)
        if self.config.warmup:
            self._warm_preprocessing()

    def _warm_preprocessing(self) -> None:
        """Decode and preprocess one image, so the first request does not pay
        for the imports and kernel set-up of the decode path."""
        import io

        import numpy as np
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buf, format="JPEG")
        self.prepare_input(ImageInput.encoded(buf.getvalue()))

    def start(self) -> None:
        self.runner.start()
        self.batcher.start()

    async def close(self, *, drain: bool = True) -> None:
        await self.batcher.close(drain=drain)
        await asyncio.get_running_loop().run_in_executor(None, self.runner.close)
        if self.metrics is not None:
            self.metrics.forget(self.name, self.version)

    async def predict(
        self,
        images: list[ImageInput],
        params: PredictParams,
        *,
        deadline: float | None = None,
        priority: int = 0,
    ) -> Served:
        """Preprocess, batch, run and postprocess `images`, answers in order."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            preparing = asyncio.gather(*(self._prepare_async(loop, image) for image in images))
            preparing.add_done_callback(retrieve_exception)  # the request may be cancelled as an image fails
            prepared = await preparing
            preprocess_seconds = time.perf_counter() - started
            items = [(tensor, geometry, params) for tensor, geometry in prepared]
            results = await self.batcher.submit(items, deadline=deadline, priority=priority)
        except BaseException:
            self.stats.record_request(False, time.perf_counter() - started)
            raise
        served = Served(
            model=self.name,
            version=self.version,
            device=self.device,
            predictions=[r.value for r in results],
            preprocess_seconds=preprocess_seconds,
            queue_seconds=max(r.queue_seconds for r in results),
            compute_seconds=max(r.compute_seconds for r in results),
            batch_size=max(r.batch_size for r in results),
        )
        self.stats.record_request(True, time.perf_counter() - started, preprocess=preprocess_seconds,
                                  queue=served.queue_seconds, compute=served.compute_seconds)
        if self.metrics is not None:
            self.metrics.served(self.name, self.version, preprocess=preprocess_seconds, queue=served.queue_seconds)
        return served

    async def _prepare_async(self, loop, image: ImageInput):
        # A preprocessed tensor is only checked and copied: cheaper than a
        # trip through the thread pool.
        if image.kind == "float32":
            return self.prepare_input(image)
        return await loop.run_in_executor(self._decode_pool, self.prepare_input, image)

    async def _run_batch(self, items: list) -> list[ImagePrediction]:
        """The batch function: run the tensors, answer each image in the instance's thread."""
        return await self.runner.run([tensor for tensor, _, _ in items], finish=lambda out: self._answer(out, items))

    def _answer(self, output, items: list) -> list[ImagePrediction]:
        geometries = [geometry for _, geometry, _ in items]
        params = [p for _, _, p in items]
        if self.task == "classification":
            return postprocess.classification(output, self.labels, params, geometries)
        if self.task == "embedding":
            return [postprocess.embedding(row, p, g) for row, p, g in zip(output, params, geometries)]
        return [postprocess.detection(d, self.labels, p, g) for d, p, g in zip(output, params, geometries)]

    def prepare_input(self, image: ImageInput):
        """One image to a float32 CHW tensor and its Geometry (runs in the decode pool)."""
        import torch

        limits = self.config
        if image.kind == "encoded":
            rgb = decode_image(image.data, max_pixels=limits.max_image_pixels, max_bytes=limits.max_image_bytes)
            return prepare(rgb, self.spec)
        array = image.array
        if image.kind == "uint8":
            check_pixels(array.shape[0], array.shape[1], limits.max_image_pixels)
            return prepare(array, self.spec)
        channels, height, width = array.shape
        expected = (self.spec.channels, self.spec.height, self.spec.width)
        if self.task == "detection":
            if channels != self.spec.channels:
                raise InvalidInputError(
                    f"float tensor has {channels} channels; model {self.name} takes {self.spec.channels}"
                )
            check_pixels(height, width, limits.max_image_pixels)
        elif (channels, height, width) != expected:
            raise InvalidInputError(
                f"float tensor is {list(array.shape)}; model {self.name} takes {list(expected)} "
                "already preprocessed (send UINT8 [H, W, 3] or encoded bytes to have the server "
                "resize and normalise)"
            )
        tensor = torch.from_numpy(array.copy())
        return tensor, Geometry(height, width, 1.0, 1.0, 0, 0)

    def describe(self) -> dict:
        """Metadata for GetModel."""
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "architecture": fmt.architecture_summary(self.artifact),
            "parameter_count": self.artifact.parameter_count,
            "max_batch_size": self.max_batch_size,
            "serving_dtype": self.runner.dtype_name,
        }


def build_served_model(path, config: ServeConfig, plan: DevicePlan, decode_pool: Executor,
                       metrics: ServerMetrics | None = None, trust=None,
                       budget: LoadBudget | None = None) -> ServedModel:
    """Read an artifact and give it a runner: worker processes (`--runner
    process`) or instances in this process (`--runner thread`). `trust`
    (a TrustPolicy) checks its signature, in the worker too. `budget`
    bounds the load (by default --load-timeout-seconds from now)."""
    instances, threads = instance_plan(config, plan.on_cuda)
    config = dataclasses.replace(config, instances_per_device=instances, cpu_threads=threads)
    budget = budget or LoadBudget(config.load_timeout_seconds)
    data = read_artifact_bytes(path, max_bytes=config.max_artifact_bytes)
    artifact = parse_artifact(data, str(path), trust=trust)
    check_served_identity(artifact, Path(path), config)
    if config.runner == "thread":
        _load_in_child_first(data, str(path), config, budget)
        loaded = load_model(path, data=data, max_bytes=config.max_artifact_bytes, trust=trust)
        runner = ModelRunner(loaded, devices=plan.devices, dtype=plan.dtype,
                             instances_per_device=config.instances_per_device, channels_last=config.channels_last,
                             cuda_graphs=config.cuda_graphs)
        artifact = loaded.artifact
    else:
        file_sha256 = hashlib.sha256(data).hexdigest()
        del data
        artifact.ClearField("weights")
        if artifact.WhichOneof("architecture") == "graph":
            artifact.graph.ClearField("program_json")
        runner = ProcessRunner(
            f"{artifact.name}:{artifact.version}", str(path), task=fmt.TASK_NAMES[artifact.task],
            devices=plan.devices, dtype=plan.dtype, instances_per_device=config.instances_per_device,
            channels_last=config.channels_last, cpu_threads=config.cpu_threads,
            max_artifact_bytes=config.max_artifact_bytes, log_level=config.log_level,
            log_format=config.log_format, trusted_keys=config.trusted_keys, require_signed=config.require_signed,
            cuda_graphs=config.cuda_graphs, load_timeout=config.load_timeout_seconds, load_budget=budget,
            file_sha256=file_sha256,
        )
    return ServedModel(artifact, str(path), runner, config, plan, decode_pool, metrics)


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


def _load_in_child_first(data: bytes, path: str, config: ServeConfig, budget: LoadBudget) -> None:
    """With `--runner thread` the network is rebuilt in this process, where a
    load that hangs could not be stopped: rebuild it once in a child process
    under the budget first, from the same bytes."""
    try:
        load_in_child(data, path, timeout=budget.remaining(), max_bytes=config.max_artifact_bytes,
                      trusted_keys=config.trusted_keys, require_signed=config.require_signed, watch=budget.watch)
    except ArtifactError:
        why = budget.failure()
        if why is not None:
            raise ArtifactLoadTimeoutError(why, path) from None
        raise
