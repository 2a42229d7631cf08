"""The Open Inference Protocol servicer (`inference.GRPCInferenceService`).

Thin, like the native one: protocol messages to framewire's domain and back,
through the same repository and batchers, so a protocol request and a
native request for one model can share a device batch. Tensor conventions
live in `oip_tensors`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from framewire import __version__
from framewire.oip import grpc_service_pb2 as pb
from framewire.oip import grpc_service_pb2_grpc
from framewire.oip import model_config_pb2 as mc

from .. import requests
from ..access import check_model_access, model_allowed
from ..batcher import retrieve_exception
from ..config import parse_version_policy
from ..domain import ModelState
from ..frontend_peers import pass_on
from ..errors import InvalidInputError, ModelNotFoundError, ServiceError, ShuttingDownError
from ..model_view import ModelView
from . import oip_tensors
from .adapter import ProtocolAdapter
from .grpc_errors import rpc, stream_rpc
from .states import oip_state

log = logging.getLogger("framewire.api")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PLATFORM = "framewire"
EXTENSIONS = ["classification", "model_repository", "model_configuration", "statistics",
              "binary_tensor_data", "parameters", "schedule_policy"]
_DATA_TYPES = {"UINT8": mc.TYPE_UINT8, "FP32": mc.TYPE_FP32, "INT64": mc.TYPE_INT64, "INT32": mc.TYPE_INT32,
               "BYTES": mc.TYPE_STRING}
#: Added to an explicit protocol priority so it outranks requests without one.
_EXPLICIT_PRIORITY = 1_000_000


parse_version = requests.version_text


def parameter_value(parameter: pb.InferParameter):
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


class InferenceProtocolServicer(ProtocolAdapter, grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    api = "oip"

    # ----------------------------------------------------------- health-ish

    @rpc
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.serving and self.repo.ready)

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        try:
            self.repo.get(request.name, parse_version(request.version))
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc
    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=PLATFORM, version=__version__, extensions=EXTENSIONS)

    # -------------------------------------------------------------- models

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        model = self.repo.get(request.name, parse_version(request.version))
        response = pb.ModelMetadataResponse(name=model.name, platform=PLATFORM)
        response.versions.extend(
            str(s.version) for s in self.repo.models().get(model.name, []) if s.state is ModelState.READY
        )
        for name, (datatype, _) in oip_tensors.INPUTS.items():
            response.inputs.add(name=name, datatype=datatype, shape=self._input_shape(model, name))
        for name, datatype, shape in self._outputs(model):
            response.outputs.add(name=name, datatype=datatype, shape=[-1, *shape])
        return response

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        model = self.repo.get(request.name, parse_version(request.version))
        config = mc.ModelConfig(name=model.name, platform=PLATFORM, backend=PLATFORM,
                                max_batch_size=model.max_batch_size)
        kind, args = parse_version_policy(model.version_policy)
        if kind == "latest":
            config.version_policy.latest.num_versions = args[0]
        elif kind == "all":
            config.version_policy.all.SetInParent()
        else:
            config.version_policy.specific.versions.extend(args)
        formats = {"images": mc.ModelInput.FORMAT_NHWC, "preprocessed": mc.ModelInput.FORMAT_NCHW}
        for name, (datatype, _) in oip_tensors.INPUTS.items():
            config.input.add(name=name, data_type=_DATA_TYPES[datatype], format=formats.get(name, 0),
                             dims=self._input_shape(model, name)[1:], optional=True)
        for name, datatype, shape in self._outputs(model):
            config.output.add(name=name, data_type=_DATA_TYPES[datatype], dims=shape)
        on_gpu = self.plan.on_cuda
        config.instance_group.add(
            name=model.name, count=model.instances_per_device,
            kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU,
            gpus=[int(d.split(":")[1]) for d in self.plan.devices] if on_gpu else [],
        )
        batching = config.dynamic_batching
        batching.preferred_batch_size.extend(model.preferred_batch_sizes)
        batching.max_queue_delay_microseconds = model.max_queue_delay_us
        batching.preserve_ordering = True
        for key, value in (("task", model.task), ("labels", str(len(model.labels))),
                           ("serving_dtype", model.serving_dtype), ("device", model.device)):
            config.parameters[key].string_value = value
        return pb.ModelConfigResponse(config=config)

    @staticmethod
    def _input_shape(model: ModelView, name: str) -> list[int]:
        if name == "images":
            return [-1, -1, -1, 3]
        if name == "encoded_images":
            return [-1]
        return model.handler.oip_preprocessed_shape()

    @staticmethod
    def _outputs(model: ModelView) -> list[tuple[str, str, list[int]]]:
        return model.handler.oip_outputs()

    # ------------------------------------------------------------ inference

    @rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    async def _infer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        try:
            version = parse_version(request.model_version)
        except InvalidInputError:
            version = 0  # refused inside, where it is counted
        with self.track(request.model_name, version):
            return await self._infer_tracked(request, context)

    async def _infer_tracked(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        started = time.perf_counter()
        version = parse_version(request.model_version)
        params = {k: parameter_value(v) for k, v in request.parameters.items()}
        model = self.repo.get(request.model_name, version)
        wanted = self._wanted_outputs(request, model)
        predict = requests.predict_params(
            top_k=requests.whole_number("top_k", params.get("top_k")),
            score_threshold=requests.real_number("score_threshold", params.get("score_threshold")),
            max_detections=requests.whole_number("max_detections", params.get("max_detections")),
            return_raw=model.handler.oip_needs_raw([name for name, _ in wanted]),
        )
        deadline = requests.deadline(context, timeout_us=requests.whole_number("timeout", params.get("timeout")))
        priority = requests.whole_number("priority", params.get("priority")) or 0
        images = oip_tensors.images_from_request(
            request, model=model.name, max_images=self.config.max_images_per_request,
            max_elements=self.config.max_tensor_elements,
        )
        async with self.repo.lease(model.name, version) as served_model:
            served = await served_model.predict(
                images, predict, deadline=deadline,
                priority=_EXPLICIT_PRIORITY - priority if priority > 0 else 0,
            )
        response = pb.ModelInferResponse(model_name=served.model, model_version=str(served.version), id=request.id)
        response.parameters["device"].string_param = served.device
        response.parameters["queue_us"].int64_param = int(served.queue_seconds * 1e6)
        response.parameters["compute_us"].int64_param = int(served.compute_seconds * 1e6)
        response.parameters["batch_size"].int64_param = served.batch_size
        response.parameters["total_us"].int64_param = int((time.perf_counter() - started) * 1e6)
        for tensor in oip_tensors.build_outputs(served_model.handler, served.predictions, wanted):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.data)
        return response

    def _wanted_outputs(self, request: pb.ModelInferRequest, model: ModelView) -> list[tuple[str, int]]:
        known = [name for name, _, _ in self._outputs(model)]
        if not request.outputs:
            return [(name, 0) for name in known]
        wanted = []
        for output in request.outputs:
            if output.name not in known:
                raise InvalidInputError(
                    f"unexpected inference output {requests.shown(output.name)} for model {model.name!r}; "
                    f"outputs are {', '.join(known)}"
                )
            k = parameter_value(output.parameters["classification"]) if "classification" in output.parameters else 0
            k = requests.whole_number("classification", k) or 0
            if k and not model.handler.oip_class_count_ok(output.name):
                raise InvalidInputError(
                    f"output {requests.shown(output.name)} does not support the classification parameter")
            wanted.append((output.name, k))
        return wanted

    @stream_rpc
    async def ModelStreamInfer(self, request_iterator, context) -> None:
        lock = asyncio.Lock()
        tasks: set[asyncio.Task] = set()
        # At most this many requests in flight: a client that does not read
        # its answers stops being read from (gRPC flow control holds it back).
        room = asyncio.Semaphore(self.config.max_stream_in_flight)

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                reply = pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except ServiceError as exc:
                reply = pb.ModelStreamInferResponse(
                    error_message=exc.message, infer_response=pb.ModelInferResponse(id=request.id)
                )
                for key, value in exc.trailers():  # a refusal's retry hint, as ModelInfer's trailing metadata
                    reply.infer_response.parameters[key].string_param = value
            except Exception as exc:  # one request's failure must not end the stream
                log.exception("stream request %r failed", request.id)
                reply = pb.ModelStreamInferResponse(error_message=f"internal error: {type(exc).__name__}",
                                                    infer_response=pb.ModelInferResponse(id=request.id))
            async with lock:
                await context.write(reply)
            room.release()

        try:
            try:
                async for request in self.streams.until_drain(request_iterator):
                    await room.acquire()
                    task = asyncio.get_running_loop().create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(retrieve_exception)  # it fails only to write, to a client that has gone
            except ShuttingDownError:
                if tasks:  # answer what was read, then end the stream
                    await asyncio.gather(*tasks, return_exceptions=True)
                raise
            if tasks:
                # An answer fails only to be written, when the client has gone.
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()

    # ----------------------------------------------------------- statistics

    @rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        version = parse_version(request.version)
        models = self.repo.models()
        if request.name:
            requests.model_name(request.name)
            check_model_access(request.name)
        if request.name and request.name not in models:
            raise ModelNotFoundError(f"model {request.name!r} is not served here (served models: "
                                     f"{', '.join(models) or 'none'})")
        response = pb.ModelStatisticsResponse()
        for name, slots in models.items():
            if (request.name and name != request.name) or not model_allowed(name):
                continue
            for slot in slots:
                if (version and slot.version != version) or slot.view is None:
                    continue
                response.model_stats.append(self._statistics(slot.view))
        if request.name and version and not response.model_stats:
            raise ModelNotFoundError(f"model {request.name!r} has no loaded version {version}")
        return response

    @staticmethod
    def _statistics(model: ModelView) -> pb.ModelStatistics:
        s = model.stats
        ns = lambda seconds: int(seconds * 1e9)  # noqa: E731
        entry = pb.ModelStatistics(
            name=model.name, version=str(model.version), last_inference=int(s.last_inference_unix * 1000),
            inference_count=s.inference_count, execution_count=s.execution_count,
        )
        stats = entry.inference_stats
        for target, source in ((stats.success, s.success), (stats.fail, s.failure), (stats.queue, s.request_queue),
                               (stats.compute_input, s.request_preprocess), (stats.compute_infer, s.request_compute)):
            target.count, target.ns = source.count, ns(source.seconds)
        stats.compute_output.count = s.success.count
        for size, batch in sorted(s.by_batch_size.items()):
            entry.batch_stats.add(
                batch_size=size,
                compute_infer=pb.StatisticDuration(count=batch.count, ns=ns(batch.compute_seconds)),
                compute_input=pb.StatisticDuration(count=batch.count),
                compute_output=pb.StatisticDuration(count=batch.count),
            )
        return entry

    # ----------------------------------------------------------- repository

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for name, slots in self.repo.models().items():
            if not model_allowed(name):
                continue
            for slot in slots:
                if request.ready and slot.state is not ModelState.READY:
                    continue
                response.models.add(name=name, version=str(slot.version), state=oip_state(slot.state),
                                    reason=slot.reason if slot.state is not ModelState.READY else "")
        if not request.ready:
            for name in sorted(self.repo.unloaded):
                if model_allowed(name):
                    response.models.add(name=name, state="UNAVAILABLE", reason="unloaded on request")
        return response

    @rpc
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context) -> pb.RepositoryModelLoadResponse:
        await self.repo.load(request.model_name)
        # With several front ends, every one of them loads it (each loads it in the shared workers once).
        await pass_on(f"/{SERVICE_NAME}/RepositoryModelLoad", request, pb.RepositoryModelLoadResponse, context,
                      self.config.load_timeout_seconds + 30)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context) -> pb.RepositoryModelUnloadResponse:
        await self.repo.unload(request.model_name)
        await pass_on(f"/{SERVICE_NAME}/RepositoryModelUnload", request, pb.RepositoryModelUnloadResponse, context,
                      self.config.drain_seconds + 30)
        return pb.RepositoryModelUnloadResponse()
