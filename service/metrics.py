"""Prometheus metrics: what operators scrape from `--metrics-port` at /metrics.

The same listener serves the operator's live page and its JSON
(operator_http.py) when `serve` is given them.

Names carry their unit. Per model and version (labels `model`, `version`):

| metric | type | what |
| --- | --- | --- |
| `framewire_requests_total` | counter | requests by `api` (native, oip) and gRPC `code` |
| `framewire_request_duration_seconds` | histogram | request latency as the server saw it, by `api` |
| `framewire_queue_duration_seconds` | histogram | time requests waited in the batcher |
| `framewire_preprocess_duration_seconds` | histogram | time decoding and preprocessing a request's images |
| `framewire_compute_duration_seconds` | histogram | time each device batch took |
| `framewire_inferences_total` | counter | images run |
| `framewire_executions_total` | counter | device batches run (inferences / executions = average batch) |
| `framewire_batch_size` | histogram | images per batch this front end formed (its sum equals the inferences) |
| `framewire_device_forwards_total` | counter | forward passes that ran the version's images; with `--frontends N` a worker merges the front ends' batches, and a merged pass counts as each batch's share (inferences / device forwards = the device's mean batch) |
| `framewire_queue_depth` | gauge | images waiting now |
| `framewire_payload_bytes_total` | counter | bytes of image payloads shipped to the device side (shared memory with worker processes): encoded files as sent, client pixels as sent |
| `framewire_queue_capacity` | gauge | images the queue holds at most (`--max-queue-size`) |
| `framewire_model_state` | gauge | 1 for the version's current `state` |

With `--latency-budget-ms` (per model and version; absent for a version without a budget):

| metric | type | what |
| --- | --- | --- |
| `framewire_latency_budget_seconds` | gauge | the budget |
| `framewire_budget_compute_seconds` | gauge | the learned compute-time curve: predicted seconds per batch, by `batch_size` |
| `framewire_budget_arrival_rate` | gauge | images admitted per second, as the policy sees the load |
| `framewire_budget_target_batch_size` | gauge | the batch size chosen for the current arrival rate |
| `framewire_budget_batch_size_limit` | gauge | the largest batch the budget allows under sustained load |
| `framewire_budget_batches_total` | counter | budgeted batches run |
| `framewire_budget_predicted_seconds_total` | counter | predicted latency of each batch's oldest item, summed (divide by the batches) |
| `framewire_budget_actual_seconds_total` | counter | the same, as it happened |
| `framewire_budget_refusals_total` | counter | requests refused at admission (UNAVAILABLE with `retry-after-ms`) |
| `framewire_budget_dropped_total` | counter | queued images not run, by `reason`: `over_budget` (could no longer make it), `superseded` (a newer frame of the stream came) |
| `framewire_budget_missed_total` | counter | images answered past their budget |
| `framewire_budget_probes_total` | counter | requests run on an idle device although predicted late (so the curve keeps learning) |

Per GPU (labels `gpu`, `name`, `uuid`), from NVML: `framewire_gpu_utilization_ratio`,
`framewire_gpu_memory_used_bytes`, `framewire_gpu_memory_total_bytes`,
`framewire_gpu_process_memory_bytes` (this server's processes),
`framewire_gpu_power_watts`, `framewire_gpu_power_limit_watts`,
`framewire_gpu_temperature_celsius`, `framewire_gpu_sm_clock_hertz`. Absent
without a GPU or NVML. Plus the client library's process metrics
(`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import make_wsgi_app, start_http_server
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .domain import ModelState
from .errors import ServiceError
from .gpu import GpuSampler

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
MODEL_LABELS = ("model", "version")
#: Label used for requests naming a model, or a version, the server does not
#: have, so a client cannot create unbounded label values.
UNKNOWN_MODEL = UNKNOWN_VERSION = "_unknown"


class ServerMetrics:
    """The metric families of one server, in a registry of its own."""

    def __init__(self, gpu: GpuSampler | None = None, models: Callable[[], dict] = dict):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("framewire_requests", "Requests by API and gRPC status code.",
                                [*MODEL_LABELS, "api", "code"], registry=r)
        self.request_seconds = Histogram("framewire_request_duration_seconds",
                                         "Request latency as the server saw it, in seconds.",
                                         [*MODEL_LABELS, "api"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("framewire_queue_duration_seconds",
                                       "Time a request's images waited in the batcher, in seconds.",
                                       MODEL_LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.preprocess_seconds = Histogram("framewire_preprocess_duration_seconds",
                                            "Time decoding and preprocessing a request's images, in seconds.",
                                            MODEL_LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("framewire_compute_duration_seconds",
                                         "Time one device batch took, in seconds.",
                                         MODEL_LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.inferences = Counter("framewire_inferences", "Images run.", MODEL_LABELS, registry=r)
        self.executions = Counter("framewire_executions", "Device batches run.", MODEL_LABELS, registry=r)
        self.batch_size = Histogram("framewire_batch_size", "Images per device batch.", MODEL_LABELS,
                                    buckets=BATCH_BUCKETS, registry=r)
        r.register(_LiveCollector(gpu, models))
        self._http = None
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], set[tuple]] = {}
        #: (family, labels) -> child: the hot path's lookup, without a lock.
        self._children: dict[tuple, object] = {}

    def serve(self, host: str, port: int, pages=None) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port. `pages`
        (an operator_http.OperatorPages) adds the operator's page and its
        JSON on the same listener."""
        if pages is None:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        else:
            server = pages.serve(host, port, make_wsgi_app(self.registry))
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # ------------------------------------------------------------- recording

    def _child(self, family, *labels):
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                self._series.setdefault(labels[:2], set()).add(key)
                child = self._children[key] = family.labels(*labels)
        return child

    @contextmanager
    def track(self, api: str, model: str, version: int, known: Callable[..., bool]):
        """Count one request and time it, with the status code it ends with.

        `known(model)` and `known(model, version)` say whether the server has
        them; the labels name only what it has (else `_unknown`)."""
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except ServiceError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            name, shown = (model, version) if known(model) else (UNKNOWN_MODEL, version)
            if version and (name == UNKNOWN_MODEL or not known(model, version)):
                shown = UNKNOWN_VERSION
            self.request(api, name, shown, code, time.perf_counter() - start)

    def request(self, api: str, model: str, version: int | str, code: str, seconds: float) -> None:
        labels = (model, str(version) if version else "")
        self._child(self.requests, *labels, api, code).inc()
        if code == "OK":
            self._child(self.request_seconds, *labels, api).observe(seconds)

    def served(self, model: str, version: int, *, preprocess: float, queue: float) -> None:
        labels = (model, str(version))
        self._child(self.preprocess_seconds, *labels).observe(preprocess)
        self._child(self.queue_seconds, *labels).observe(queue)

    def batch(self, model: str, version: int, size: int, seconds: float) -> None:
        labels = (model, str(version))
        self._child(self.inferences, *labels).inc(size)
        self._child(self.executions, *labels).inc()
        self._child(self.batch_size, *labels).observe(size)
        self._child(self.compute_seconds, *labels).observe(seconds)

    def forget(self, model: str, version: int) -> None:
        """Drop an unloaded version's series (requests for "any version" stay)."""
        with self._lock:
            series = self._series.pop((model, str(version)), set())
            for key in series:
                self._children.pop(key, None)
        for family, labels in series:
            try:
                family.remove(*labels)
            except KeyError:
                pass


class _LiveCollector:
    """Gauges read at scrape time: queue depths, model states, GPU figures."""

    def __init__(self, gpu: GpuSampler | None, models: Callable[[], dict]):
        self.gpu = gpu
        self.models = models

    def collect(self):
        depth = GaugeMetricFamily("framewire_queue_depth", "Images waiting in the batcher now.",
                                  labels=list(MODEL_LABELS))
        state = GaugeMetricFamily("framewire_model_state", "1 for the version's current state.",
                                  labels=[*MODEL_LABELS, "state"])
        payload = CounterMetricFamily("framewire_payload_bytes", "Bytes of image payloads shipped to the device side.",
                                      labels=list(MODEL_LABELS))
        forwards = CounterMetricFamily("framewire_device_forwards", "Forward passes that ran the version's images "
                                       "(a pass merged across front ends counts as each batch's share).",
                                       labels=list(MODEL_LABELS))
        capacity = GaugeMetricFamily("framewire_queue_capacity", "Images the batcher queue holds at most "
                                     "(--max-queue-size); more are refused.", labels=list(MODEL_LABELS))
        for name, slots in self.models().items():
            for slot in slots:
                labels = [name, str(slot.version)]
                for candidate in ModelState:
                    state.add_metric([*labels, candidate.value], 1.0 if slot.state is candidate else 0.0)
                if slot.served is not None:
                    depth.add_metric(labels, slot.served.queue_depth)
                    capacity.add_metric(labels, slot.served.queue_capacity)
                    payload.add_metric(labels, slot.served.payload_bytes)
                    forwards.add_metric(labels, slot.served.device_forwards)
        yield depth
        yield capacity
        yield state
        yield payload
        yield forwards
        yield from budget_families(
            ([name, str(slot.version)], status) for name, slots in self.models().items() for slot in slots
            if slot.served is not None and (status := slot.served.budget_status) is not None)
        if self.gpu is None or not self.gpu.available:
            return
        yield from gpu_families(self.gpu.readings)


GPU_METRICS = (
    ("framewire_gpu_utilization_ratio", "GPU utilisation over the last sample period, 0..1.",
     lambda r: None if r.utilization_percent is None else r.utilization_percent / 100),
    ("framewire_gpu_memory_used_bytes", "Device memory used by every process.", lambda r: r.memory_used_bytes),
    ("framewire_gpu_memory_total_bytes", "Device memory in total.", lambda r: r.memory_total_bytes),
    ("framewire_gpu_process_memory_bytes", "Device memory this server's processes hold.",
     lambda r: r.process_memory_bytes),
    ("framewire_gpu_power_watts", "Power draw.", lambda r: r.power_watts),
    ("framewire_gpu_power_limit_watts", "Enforced power limit.", lambda r: r.power_limit_watts),
    ("framewire_gpu_temperature_celsius", "GPU temperature.", lambda r: r.temperature_celsius),
    ("framewire_gpu_sm_clock_hertz", "Streaming-multiprocessor clock.", lambda r: r.sm_clock_hertz),
)


def budget_families(statuses):
    """The latency-budget families from ([model, version], BudgetStatus) pairs."""
    labels = list(MODEL_LABELS)
    gauges = {
        "budget": GaugeMetricFamily("framewire_latency_budget_seconds", "The latency budget.", labels=labels),
        "curve": GaugeMetricFamily("framewire_budget_compute_seconds", "Learned compute seconds per batch.",
                                   labels=[*labels, "batch_size"]),
        "rate": GaugeMetricFamily("framewire_budget_arrival_rate", "Images admitted per second (weighted).",
                                  labels=labels),
        "target": GaugeMetricFamily("framewire_budget_target_batch_size", "Batch size chosen for the arrival rate.",
                                    labels=labels),
        "limit": GaugeMetricFamily("framewire_budget_batch_size_limit", "Largest batch the budget allows.",
                                   labels=labels),
        "margin": GaugeMetricFamily("framewire_budget_admission_margin", "Share added to predicted compute times "
                                    "at admission: the base margin plus what late answers added.", labels=labels),
        "batches": CounterMetricFamily("framewire_budget_batches", "Budgeted batches run.", labels=labels),
        "predicted": CounterMetricFamily("framewire_budget_predicted_seconds", "Predicted latency of each batch's "
                                         "oldest item, summed.", labels=labels),
        "actual": CounterMetricFamily("framewire_budget_actual_seconds", "Actual latency of each batch's oldest "
                                      "item, summed.", labels=labels),
        "refused": CounterMetricFamily("framewire_budget_refusals", "Requests refused at admission.", labels=labels),
        "dropped": CounterMetricFamily("framewire_budget_dropped", "Queued images not run, by reason.",
                                       labels=[*labels, "reason"]),
        "missed": CounterMetricFamily("framewire_budget_missed", "Images answered past their budget.", labels=labels),
        "probes": CounterMetricFamily("framewire_budget_probes", "Requests run on an idle device although "
                                      "predicted late.", labels=labels),
    }
    for labels, s in statuses:
        gauges["budget"].add_metric(labels, s.budget_seconds)
        for point in s.curve:
            gauges["curve"].add_metric([*labels, str(point.batch_size)], point.seconds)
        gauges["rate"].add_metric(labels, s.arrival_rate)
        gauges["target"].add_metric(labels, s.target_batch_size)
        gauges["limit"].add_metric(labels, s.batch_size_limit)
        gauges["margin"].add_metric(labels, s.admission_margin)
        gauges["batches"].add_metric(labels, s.batches)
        gauges["predicted"].add_metric(labels, s.predicted_seconds_sum)
        gauges["actual"].add_metric(labels, s.actual_seconds_sum)
        gauges["refused"].add_metric(labels, s.refused)
        gauges["dropped"].add_metric([*labels, "over_budget"], s.dropped_over_budget)
        gauges["dropped"].add_metric([*labels, "superseded"], s.superseded)
        gauges["missed"].add_metric(labels, s.missed)
        gauges["probes"].add_metric(labels, s.probes)
    yield from gauges.values()


def gpu_families(readings):
    """One gauge family per GPU figure, a sample per GPU that reports it."""
    for name, help_text, value_of in GPU_METRICS:
        family = GaugeMetricFamily(name, help_text, labels=["gpu", "name", "uuid"])
        for reading in readings:
            value = value_of(reading)
            if value is not None:
                family.add_metric([str(reading.index), reading.name, reading.uuid], float(value))
        yield family
