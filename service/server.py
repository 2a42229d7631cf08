"""The gRPC server: wiring, health, reflection, start-up and graceful drain.

`FramewireServer(config)` builds everything; `await start()` binds the port
(port 0 picks a free one, see `.port`), starts serving health checks at once
(NOT_SERVING), loads and warms the models, then reports SERVING. `await
stop(grace)` reports NOT_SERVING, refuses new calls, lets in-flight ones
finish within `grace` seconds and unloads the models. `serve(config)` runs
one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from framewire import __version__
from framewire.exporter.signing import TrustPolicy
from framewire.oip import grpc_service_pb2_grpc
from framewire.v1 import inference_pb2, inference_pb2_grpc

from . import heap
from .api.native import NativeServicer
from .api.oip import SERVICE_NAME as OIP_SERVICE
from .api.oip import InferenceProtocolServicer
from .auth import AuthInterceptor, TokenStore
from .call_limit import PENDING_CALL_OPTIONS, CallLimitInterceptor
from .config import ServeConfig
from .device_workers import DeviceWorkers
from .devices import plan_devices
from .frontend_peers import announce_ready, frontend_label, own_peer_socket, supervisor_metrics_port
from .gpu import GpuSampler, load_nvml
from .interceptors import LastResortInterceptor
from .load_budget import LoadBudget
from .metrics import ServerMetrics
from .model import ServedModel, build_served_model
from .operator_http import OperatorPages
from .repository import ModelRepository
from .status_sampler import StatusSampler
from .streams import StreamLimiter

log = logging.getLogger("framewire.server")

#: Health service name of one model: SERVING while it has a READY version.
MODEL_HEALTH_PREFIX = "framewire.model."
#: Health service name that is SERVING while the process runs, loading or
#: not: for liveness probes, which should not restart a server still warming up.
LIVENESS_SERVICE = "framewire.liveness"
NATIVE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["ModelInference"].full_name


@dataclass
class ServerState:
    started: float = field(default_factory=time.monotonic)
    serving: bool = False
    #: The /metrics port operators scrape (with --frontends N, the supervisor's: the sum over front ends).
    metrics_port: int = 0
    #: This process's own metrics listener (the same but in a front end the supervisor started).
    own_metrics_port: int = 0


class FramewireServer:
    """One framewire server process; see the module doc."""

    def __init__(self, config: ServeConfig, *, nvml=None):
        """`nvml` replaces the NVML module (tests without a GPU); by default
        NVML is loaded if it can be. Raises ConfigError, before anything
        starts, when the repository lacks what the config names."""
        self.config = config
        ModelRepository(config, build=None).check_contents()
        import torch

        if config.runner == "process":
            # Networks, decoding and preprocessing run in worker processes;
            # here torch only turns outputs into answers. One intra-op thread
            # keeps OpenMP teams from spinning on cores the workers need.
            torch.set_num_threads(1)
        elif config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        self.plan = plan_devices(config.device, config.dtype)
        self.trust = TrustPolicy.from_directory(config.trusted_keys, config.require_signed) if config.trusted_keys else None
        if self.trust is not None:
            log.info("trusting %d signing key(s) from %s%s", len(self.trust.keys), config.trusted_keys,
                     "; unsigned artifacts are refused" if config.require_signed else "")
        log.info("devices: %s (%s)%s", self.plan.label, self.plan.dtype,
                 f"; CPU fallback: {self.plan.fallback_reason}" if self.plan.fallback_reason else "")
        #: Worker processes per device, hosting every version placed there (--runner process).
        self.workers = DeviceWorkers.for_plan(self.plan, config) if config.runner == "process" else None
        # Checks the image headers of large requests off the event loop.
        self.admission_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="admit")
        self.state = ServerState()
        self.repo = ModelRepository(config, self._build_model, on_change=self._health_changed)
        self.gpu = GpuSampler(nvml if nvml is not None else load_nvml(), interval=config.gpu_sample_seconds,
                              pids=self._our_pids)
        self.metrics = ServerMetrics(self.gpu, models=self.repo.models)
        self.status = StatusSampler(self)
        self.health = health_aio.HealthServicer()
        self._health_names: set[str] = set()
        self._health_dirty = asyncio.Event()
        self._health_task: asyncio.Task | None = None
        self.port: int | None = None

        limit = config.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Front ends of one server share the port (--frontends N); otherwise the port is ours alone.
            ("grpc.so_reuseport", 1 if frontend_label() else 0),
        ]
        if config.max_connection_age_seconds:
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)))
        self.tokens = TokenStore(config.tokens_file) if config.tokens_file else None
        interceptors = [LastResortInterceptor()]
        if self.tokens is not None:
            interceptors.insert(0, AuthInterceptor(self.tokens))
        interceptors.insert(0, CallLimitInterceptor(config.max_concurrent_rpcs))
        self.grpc = grpc.aio.server(interceptors=interceptors, options=options + PENDING_CALL_OPTIONS)
        self.streams = StreamLimiter(config.max_streams_per_connection)
        self.native = NativeServicer(self.repo, config, self.plan, self.state, self.metrics, self.gpu, self.streams,
                                     status=self.status)
        inference_pb2_grpc.add_ModelInferenceServicer_to_server(self.native, self.grpc)
        self.protocol = InferenceProtocolServicer(self.repo, config, self.plan, self.state, self.metrics,
                                                  self.streams)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.protocol, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.service_names = [NATIVE_SERVICE, OIP_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]

    def _build_model(self, path: Path, budget: LoadBudget) -> ServedModel:
        model_config = self.config.for_model(path.parent.parent.name)
        return build_served_model(path, model_config, self.plan, self.metrics, self.trust, self.admission_pool,
                                  budget, self.workers)

    def _our_pids(self) -> set[int]:
        pids = {os.getpid()}
        for model in self.repo.served():
            pids |= model.pids()
        if self.workers is not None:
            pids |= self.workers.pids()
        return pids

    async def start(self) -> int:
        """Bind, serve health at once, load the models, then report SERVING."""
        for note in self.config.shadowed_overrides:
            log.info("config: %s (flags and the environment beat the file)", note)
        if self.config.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                [*self.service_names, reflection.SERVICE_NAME], self.grpc, pool=reflection_pool()
            )
        address = f"{self.config.host}:{self.config.port}"
        try:
            credentials = server_credentials(self.config)
            if credentials is None:
                if not is_loopback(self.config.host):
                    log.warning("serving plaintext on %s: anyone on the network can read and send requests; "
                                "use --tls-cert/--tls-key (and --tokens-file) off loopback", self.config.host)
                self.port = self.grpc.add_insecure_port(address)
            else:
                self.port = self.grpc.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on {address}: the address is in use or not this machine's; "
                          "pick another --port (0: any free port) or --host")
        peers = own_peer_socket()
        if peers is not None:  # the other front ends pass repository calls on here
            self.grpc.add_insecure_port(f"unix:{peers}")
        await self.grpc.start()
        await self.status.sample()
        if self.config.metrics_port >= 0:
            pages = OperatorPages(lambda: self.status.document_json, self.status.history_json)
            try:
                self.state.own_metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port,
                                                                 pages)
                self.state.metrics_port = supervisor_metrics_port() or self.state.own_metrics_port
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {self.config.metrics_host}:{self.config.metrics_port}: "
                              f"{exc.strerror or exc}; pick another --metrics-port (0: any free port, -1: off)"
                              ) from None
            if frontend_label() is None:  # a front end's own is read by its supervisor, which serves the sum
                log.info("metrics at http://%s:%d/metrics, live page at http://%s:%d/", self.config.metrics_host,
                         self.state.metrics_port, self.config.metrics_host, self.state.metrics_port)
        self.gpu.start()
        self.status.start()
        await self._sync_health()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        log.info("listening on %s:%d (framewire %s); loading models from %s",
                 self.config.host, self.port, __version__, self.config.repo)
        await self.repo.start()
        heap.settle()
        self.state.serving = True
        await self._sync_health()
        summary = serving_summary(self.repo.models())
        label = frontend_label()
        if label is None:
            log.info("%s", summary)
        else:  # the supervisor says "serving" once every front end is up
            log.info("front end %s is up (pid %d): %s", label, os.getpid(), summary.replace("serving: ", "models ", 1))
            announce_ready(os.getpid(), self.state.own_metrics_port, summary)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, finish in-flight ones within `grace`, unload."""
        grace = self.config.drain_seconds if grace is None else grace
        self.state.serving = False
        await self.health.enter_graceful_shutdown()
        log.info("draining: refusing new calls, ending open streams once their frames in flight are answered, "
                 "waiting up to %.0fs for in-flight calls", grace)
        self.streams.drain()
        await self.grpc.stop(grace)
        await self.repo.close()
        if self.workers is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.workers.close)
        await self.status.close()
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        self.gpu.stop()
        self.metrics.close()
        self.admission_pool.shutdown(wait=True)
        log.info("stopped")

    def _health_changed(self) -> None:
        self._health_dirty.set()

    async def _health_loop(self) -> None:
        while True:
            await self._health_dirty.wait()
            self._health_dirty.clear()
            await self._sync_health()

    async def _sync_health(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        up = self.state.serving and self.repo.ready
        for name in ("", *self.service_names):
            await self.health.set(name, serving if up else not_serving)
        await self.health.set(LIVENESS_SERVICE, serving)
        if not self.config.model_health:
            return
        models = self.repo.models()
        names = {MODEL_HEALTH_PREFIX + n for n in models}
        for name in names | self._health_names:
            model = name[len(MODEL_HEALTH_PREFIX):]
            ok = self.state.serving and any(s.state.value == "READY" for s in models.get(model, []))
            await self.health.set(name, serving if ok else not_serving)
        self._health_names = names


def serving_summary(models: dict[str, list]) -> str:
    """The start-up line: every READY version, then every other one with its
    state and reason (`models` as ModelRepository.models() gives them)."""
    ready, other = [], []
    for name, slots in models.items():
        for slot in slots:
            if slot.state.value == "READY":
                ready.append(f"{name} v{slot.version}")
            else:
                reason = f": {slot.reason}" if slot.reason else ""
                other.append(f"{name} v{slot.version} ({slot.state.value}{reason})")
    line = "serving: " + (", ".join(ready) or "no models")
    return line + ("; not serving: " + "; ".join(other) if other else "")


def reflection_pool():
    """One descriptor pool holding every service the server offers, for
    reflection: the protocol's messages live outside protobuf's default pool
    (see framewire/oip/pool.py), so reflection gets a pool of its own."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_reflection.v1alpha import reflection_pb2

    from framewire.oip import grpc_service_pb2, model_config_pb2
    from framewire.v1 import artifact_pb2

    pool = descriptor_pool.DescriptorPool()
    for module in (artifact_pb2, inference_pb2, model_config_pb2, grpc_service_pb2, health_pb2, reflection_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    return pool


def server_credentials(config: ServeConfig):
    """TLS credentials from --tls-cert/--tls-key (and --tls-client-ca for mTLS), or None."""
    if not config.tls_cert:
        return None
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve(config: ServeConfig) -> int:
    """Run a server until SIGTERM or SIGINT, then drain; returns the exit code.
    SIGHUP re-reads the tokens file."""
    server = FramewireServer(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if server.tokens is not None:
        loop.add_signal_handler(signal.SIGHUP, server.tokens.reload)
    if frontend_label() is not None:
        from .frontend_peers import watch_supervisor

        watch_supervisor(lambda: loop.call_soon_threadsafe(stopping.set))
    starting = loop.create_task(server.start())
    done, _ = await asyncio.wait({starting, loop.create_task(stopping.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        if starting.exception() is not None:
            with contextlib.suppress(Exception):  # release what did start; the start-up error is the one to report
                await server.stop(0)
            raise starting.exception()
        await stopping.wait()
    else:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
    log.info("signal received")
    await server.stop(config.drain_seconds)
    return 0
