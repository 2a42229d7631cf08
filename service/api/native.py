"""The native `framewire.v1.ModelInference` servicer: thin conversion and status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from framewire import __version__
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc

from .. import requests
from ..access import model_allowed
from ..batcher import retrieve_exception
from ..config import ServeConfig
from ..devices import DevicePlan, describe_device
from ..domain import PredictParams
from ..frontend_peers import frontend_label, whole_server_status
from ..errors import (InferenceError, InvalidInputError, LimitExceededError, OverBudgetError, ServiceError,
                      SupersededError)
from ..gpu import GpuSampler
from ..metrics import ServerMetrics
from ..repository import ModelRepository
from ..status_document import visible_json
from ..streams import StreamLimiter
from . import native_messages as messages
from .adapter import ProtocolAdapter
from .grpc_errors import rpc, status_code, stream_rpc
from .states import native_state

log = logging.getLogger("framewire.api")


class NativeServicer(ProtocolAdapter, inference_pb2_grpc.ModelInferenceServicer):
    api = "native"

    def __init__(self, repo: ModelRepository, config: ServeConfig, plan: DevicePlan, server_state,
                 metrics: ServerMetrics, gpu: GpuSampler, streams: StreamLimiter, status=None):
        """`status` (a StatusSampler) supplies GetServerStatus's status_json."""
        super().__init__(repo, config, plan, server_state, metrics, streams)
        self.status = status
        self.gpu = gpu
        self.max_elements = config.max_tensor_elements

    @rpc
    async def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        start = time.perf_counter()
        with self.track(request.model, request.version):
            params = messages.predict_params(request.options)
            image = messages.image_input(request.image, max_elements=self.max_elements)
            async with self.repo.lease(request.model, request.version) as model:
                served = await model.predict([image], params, deadline=requests.deadline(context))
        return pb.PredictResponse(
            served_by=messages.served_by(served),
            prediction=messages.prediction(served.predictions[0], model.handler),
            timing=messages.timing(served, time.perf_counter() - start),
        )

    @rpc
    async def BatchPredict(self, request: pb.BatchPredictRequest, context) -> pb.BatchPredictResponse:
        start = time.perf_counter()
        with self.track(request.model, request.version):
            if not request.images:
                raise InvalidInputError("the batch holds no images; send at least one")
            requests.image_count(len(request.images), self.config.max_images_per_request)
            params = messages.predict_params(request.options)
            images = [
                messages.image_input(image, max_elements=self.max_elements, where=f"images[{i}]")
                for i, image in enumerate(request.images)
            ]
            async with self.repo.lease(request.model, request.version) as model:
                served = await model.predict(images, params, deadline=requests.deadline(context))
        return pb.BatchPredictResponse(
            served_by=messages.served_by(served),
            predictions=[messages.prediction(p, model.handler) for p in served.predictions],
            timing=messages.timing(served, time.perf_counter() - start),
        )

    @stream_rpc
    async def StreamPredict(self, request_iterator, context) -> None:
        session = _StreamSession(self, context)
        try:
            # On drain the loop raises ShuttingDownError; `finish` answers the
            # frames already read before the stream ends with UNAVAILABLE.
            async for frame in self.streams.until_drain(request_iterator):
                session.accept(frame)
                # Backpressure: a client that does not read its answers stops
                # being read from, so gRPC flow control holds its frames back.
                await session.room_to_read()
        finally:
            await session.finish()

    @rpc
    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse()
        for name, slots in self.repo.models().items():
            if not model_allowed(name):
                continue
            task = next((s.task for s in slots if s.task), "")
            response.models.add(name=name, task=task, versions=[messages.version_status(s) for s in slots])
        return response

    @rpc
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        model = self.repo.get(request.model, request.version)
        response = pb.GetModelResponse(
            name=model.name,
            version=model.version,
            task=model.task,
            input=model.input_spec,
            preprocessing=model.preprocessing,
            outputs=model.outputs,
            label_count=len(model.labels),
            architecture=model.architecture,
            parameter_count=model.parameter_count,
            max_batch_size=model.max_batch_size,
            serving_dtype=model.serving_dtype,
            versions=[messages.version_status(s) for s in self.repo.models().get(model.name, [])],
            weights_sha256=model.weights_sha256,
            signing_key_id=model.signing_key_id,
            program_sha256=model.program_sha256,
        )
        if request.include_labels:
            response.labels.extend(model.labels)
        return response

    @rpc
    async def GetServerStatus(self, request, context) -> pb.GetServerStatusResponse:
        response = pb.GetServerStatusResponse(
            server_version=__version__,
            device_fallback_reason=self.plan.fallback_reason,
            uptime_seconds=time.monotonic() - self.state.started,
            serving=self.state.serving,
            metrics_port=self.state.metrics_port,
        )
        for name in self.plan.devices:
            self._describe_device(response.devices.add(), name)
        for name, slots in self.repo.models().items():
            if not model_allowed(name):
                continue
            for slot in slots:
                runtime = response.models.add(
                    model=slot.name, version=slot.version, state=native_state(slot.state), device=slot.device
                )
                if slot.view is not None:
                    stats = slot.view.stats
                    runtime.queue_depth = slot.view.queue_depth
                    runtime.inference_count = stats.inference_count
                    runtime.execution_count = stats.execution_count
                    runtime.request_success_count = stats.request_success
                    runtime.request_failure_count = stats.request_failure
                    runtime.max_batch_size_seen = stats.max_batch_size_seen
                    for key, value in stats.recent().items():
                        setattr(runtime, key, value)
        if self.status is not None:
            document = self.status.document_json
            if frontend_label() is not None:  # one of several front ends: the whole server's view
                document = await asyncio.get_running_loop().run_in_executor(None, whole_server_status, document)
            response.status_json = visible_json(document, model_allowed)
        return response

    def _describe_device(self, device: pb.DeviceStatus, name: str) -> None:
        d = describe_device(name)
        device.name, device.description = d["name"], d["description"]
        device.memory_total_bytes, device.memory_allocated_bytes = d["total"], d["allocated"]
        reading = self.gpu.reading_for(uuid=d.get("uuid"), index=d.get("index"))
        if reading is None:
            return
        device.sampled, device.uuid = True, reading.uuid
        for field_name, value in (
            ("utilization_percent", reading.utilization_percent),
            ("memory_used_bytes", reading.memory_used_bytes),
            ("memory_total_bytes", reading.memory_total_bytes),
            ("process_memory_bytes", reading.process_memory_bytes),
            ("power_watts", reading.power_watts),
            ("power_limit_watts", reading.power_limit_watts),
            ("temperature_celsius", reading.temperature_celsius),
            ("sm_clock_mhz", None if reading.sm_clock_hertz is None else reading.sm_clock_hertz / 1e6),
        ):
            if value is not None:
                setattr(device, field_name, value)


@dataclass
class _CameraState:
    """What a stream id has said so far, and its answers in flight, in order."""

    model: str = ""
    version: int = 0
    params: PredictParams = field(default_factory=PredictParams)
    last_frame: int | None = None
    pending: asyncio.Queue = field(default_factory=asyncio.Queue)
    in_flight: int = 0
    writer: asyncio.Task | None = None


class _StreamSession:
    """One StreamPredict call: frames in, answers out in frame order per stream id."""

    def __init__(self, servicer: NativeServicer, context):
        self.servicer = servicer
        self.context = context
        self.cameras: dict[str, _CameraState] = {}
        self.write_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.unwritten = 0
        self.written = asyncio.Event()
        self.max_unwritten = 2 * servicer.config.max_stream_in_flight

    async def room_to_read(self) -> None:
        while self.unwritten >= self.max_unwritten:
            self.written.clear()
            await self.written.wait()

    def accept(self, frame: pb.StreamFrame) -> None:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        try:
            key = requests.stream_id(frame.stream_id)
            problem = None
        except InvalidInputError as exc:  # refused in order with every other bad id; no state kept for it
            key, problem = None, exc
        camera = self.cameras.get(key)
        if camera is None:
            camera = self.cameras[key] = _CameraState()
            camera.writer = loop.create_task(self._write(camera))
            camera.writer.add_done_callback(retrieve_exception)  # it fails only to write, to a client that has gone
        problem = problem or self._check(camera, frame)
        if problem is not None:
            result = loop.create_future()
            result.set_result(self._failed(frame, problem))
        else:
            camera.in_flight += 1
            result = loop.create_task(self._run(camera, frame, arrived))
            self.tasks.add(result)
            result.add_done_callback(self.tasks.discard)
        camera.pending.put_nowait(result)
        self.unwritten += 1

    def _check(self, camera: _CameraState, frame: pb.StreamFrame) -> ServiceError | None:
        try:
            if frame.model:
                camera.model, camera.version = frame.model, frame.version
            if frame.HasField("options"):
                camera.params = messages.predict_params(frame.options)
        except ServiceError as exc:
            return exc
        if not camera.model:
            return InvalidInputError(f"stream {frame.stream_id!r}: the first frame must name a model")
        if camera.last_frame is not None and frame.frame_number <= camera.last_frame:
            return InvalidInputError(
                f"stream {frame.stream_id!r}: frame {frame.frame_number} does not follow frame "
                f"{camera.last_frame}; frame numbers must increase"
            )
        camera.last_frame = frame.frame_number
        if camera.in_flight >= self.servicer.config.max_stream_in_flight:
            return LimitExceededError(
                f"stream {frame.stream_id!r} has {camera.in_flight} frames waiting (limit "
                f"{self.servicer.config.max_stream_in_flight}, --max-stream-in-flight); send fewer "
                "frames or skip stale ones"
            )
        return None

    async def _run(self, camera: _CameraState, frame: pb.StreamFrame, arrived: float) -> pb.StreamResult:
        start = time.perf_counter()
        deadline = requests.frame_deadline(self.context, arrived, frame.max_age_ms)
        try:
            with self.servicer.track(camera.model, camera.version):
                image = messages.image_input(frame.image, max_elements=self.servicer.max_elements)
                async with self.servicer.repo.lease(camera.model, camera.version) as model:
                    served = await model.predict([image], camera.params, deadline=deadline, latest_of=id(camera))
        except ServiceError as exc:
            result = self._failed(frame, exc)
            # Stale (max age), superseded by a newer frame, or refused by the latency budget: skipped.
            result.skipped = (exc.code == "DEADLINE_EXCEEDED" and bool(frame.max_age_ms)) or isinstance(
                exc, (SupersededError, OverBudgetError))
            return result
        except Exception as exc:  # one frame's failure must not end the stream
            log.exception("stream %s frame %d failed", requests.shown(frame.stream_id), frame.frame_number)
            return self._failed(frame, InferenceError(f"internal error on this frame: {type(exc).__name__}"))
        finally:
            camera.in_flight -= 1
        return pb.StreamResult(
            stream_id=frame.stream_id,
            frame_number=frame.frame_number,
            served_by=messages.served_by(served),
            prediction=messages.prediction(served.predictions[0], model.handler),
            timing=messages.timing(served, time.perf_counter() - start),
            status=pb.FrameStatus(code=0),
            capture_time_us=frame.capture_time_us,
        )

    @staticmethod
    def _failed(frame: pb.StreamFrame, error: ServiceError) -> pb.StreamResult:
        return pb.StreamResult(
            stream_id=frame.stream_id[:requests.MAX_STREAM_ID_CHARS],
            frame_number=frame.frame_number,
            status=pb.FrameStatus(code=status_code(error).value[0], message=error.message),
            capture_time_us=frame.capture_time_us,
        )

    async def _write(self, camera: _CameraState) -> None:
        while True:
            result = await camera.pending.get()
            if result is None:
                return
            answer = await result
            async with self.write_lock:
                await self.context.write(answer)
            self.unwritten -= 1
            self.written.set()

    async def finish(self) -> None:
        """Input ended (or the call was cancelled): answer what is in flight, then stop."""
        try:
            for camera in self.cameras.values():
                camera.pending.put_nowait(None)
            writers = [c.writer for c in self.cameras.values() if c.writer is not None]
            if writers:
                # A writer fails only when the client has gone (cancelled); its
                # error is collected here, neither raised nor left unretrieved.
                await asyncio.gather(*writers, return_exceptions=True)
        finally:
            for task in list(self.tasks) + [c.writer for c in self.cameras.values() if c.writer]:
                task.cancel()
