"""A `framewire serve` process for benchmarks, and the server's own view of a run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


class BenchServer:
    """`framewire serve` on 127.0.0.1 with a free port; its log in `log_path`."""

    def __init__(self, repo: Path, args: list[str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        command = [sys.executable, "-m", "framewire", "serve", "--repo", str(repo), "--host", "127.0.0.1",
                   "--port", "0", "--metrics-port", "0", *args]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            text = log_path.read_text()
            port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if port and "serving: " in text:
                self.address = f"127.0.0.1:{port.group(1)}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"framewire serve exited:\n{text}")
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"framewire serve did not start:\n{log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def model_counters(address: str, model: str, token: str | None = None) -> dict:
    """Cumulative counters of a model (all its versions), from ModelStatistics."""
    from framewire.connection import Connection
    from framewire.oip import grpc_service_pb2 as pb
    from framewire.oip import grpc_service_pb2_grpc

    connection = Connection(address, token=token)
    with connection.channel() as channel:
        reply = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=model), timeout=30, metadata=connection.call_metadata)
    totals = dict.fromkeys(("inferences", "executions", "requests", "queue_ns", "compute_ns", "preprocess_ns"), 0)
    for entry in reply.model_stats:
        s = entry.inference_stats
        totals["inferences"] += entry.inference_count
        totals["executions"] += entry.execution_count
        totals["requests"] += s.success.count
        totals["queue_ns"] += s.queue.ns
        totals["compute_ns"] += s.compute_infer.ns
        totals["preprocess_ns"] += s.compute_input.ns
    return totals


def server_view(before: dict, after: dict) -> dict:
    """What the server saw between two counter readings."""
    delta = {k: after[k] - before[k] for k in before}
    requests = max(delta["requests"], 1)
    return {
        "average_batch_size": delta["inferences"] / delta["executions"] if delta["executions"] else 0.0,
        "mean_queue_ms": delta["queue_ns"] / requests / 1e6,
        "mean_compute_ms": delta["compute_ns"] / requests / 1e6,
        "mean_preprocess_ms": delta["preprocess_ns"] / requests / 1e6,
        "inferences": delta["inferences"],
        "executions": delta["executions"],
    }


def measured_point(address: str, model: str, spec: dict, processes: int, token: str | None = None,
                   pid: int | None = None) -> dict:
    """Run one load point against a server: the load's summary and the
    server's view of it (with its CPU per image when `pid` is known, and
    payload bytes per image when it exports the metric)."""
    from . import loadgen

    before = model_counters(address, model, token)
    cpu_before, metrics_before = server_cpu(pid), metric_totals(address, model, token)
    load = loadgen.spawn(spec, processes)
    after = model_counters(address, model, token)
    cpu_after, metrics_after = server_cpu(pid), metric_totals(address, model, token)
    view = server_view(before, after)
    if metrics_before is not None and metrics_after is not None:
        # A counter's series appears with its first count: absent before is zero.
        delta = {k: v - metrics_before.get(k, 0.0) for k, v in metrics_after.items() if k != "frontends"}
        # /metrics is the whole server's (with --frontends N, the sum over the front ends; ModelStatistics
        # answers for the front end the call reached).
        if delta.get("executions") and "inferences" in delta:
            view.update(inferences=delta["inferences"], executions=delta["executions"],
                        average_batch_size=delta["inferences"] / delta["executions"])
        if delta.get("device_forwards"):
            view["device_batch_size"] = view["inferences"] / delta["device_forwards"]
        if metrics_after.get("frontends", 1) > 1 and delta.get("queued") and delta.get("executions"):
            # ModelStatistics answers for one front end (the one a call reaches): the means from /metrics.
            view["mean_queue_ms"] = delta["queue_seconds"] / delta["queued"] * 1000
            view["mean_compute_ms"] = delta["compute_seconds"] / delta["executions"] * 1000  # per batch
        if "payload_bytes" in delta and view["inferences"]:
            view["payload_bytes_per_image"] = delta["payload_bytes"] / view["inferences"]
    view.update(cpu_view(cpu_before, cpu_after, view["inferences"]))
    return {**load.summary(), "server": view}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process, from /proc (None once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            continue
    return found


def _is_worker(pid: int) -> bool:
    try:
        return b"framewire.service.worker" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def server_cpu(pid: int | None) -> dict:
    """CPU seconds of a server's front end (`pid`) and of each of its worker
    processes. With --frontends N, `pid` is the supervisor: "frontend" is the
    sum of the supervisor and its front-end processes."""
    if pid is None:
        return {}
    frontend, workers, todo = 0.0, {}, [pid]
    while todo:
        current = todo.pop()
        seconds = _cpu_seconds(current)
        if seconds is None:
            continue
        if current != pid and _is_worker(current):
            workers[current] = seconds
            continue
        frontend += seconds
        todo += _children(current)
    return {"frontend": frontend, "workers": workers}


def cpu_view(before: dict, after: dict, images: int) -> dict:
    """Front-end and worker CPU milliseconds per image between two readings
    (a worker started in between counts from zero)."""
    if not before or not images:
        return {}
    workers = sum(s - before["workers"].get(pid, 0.0) for pid, s in after["workers"].items())
    return {"frontend_ms_per_image": (after["frontend"] - before["frontend"]) * 1000 / images,
            "workers_ms_per_image": workers * 1000 / images, "worker_processes": len(after["workers"])}


#: Counters of a model read from /metrics: name in the result -> metric.
METRIC_TOTALS = {"payload_bytes": "framewire_payload_bytes_total", "inferences": "framewire_inferences_total",
                 "executions": "framewire_executions_total", "device_forwards": "framewire_device_forwards_total",
                 "queue_seconds": "framewire_queue_duration_seconds_sum",
                 "queued": "framewire_queue_duration_seconds_count",
                 "compute_seconds": "framewire_compute_duration_seconds_sum"}


def metric_totals(address: str, model: str, token: str | None = None) -> dict | None:
    """A model's counters (all versions) from the server's /metrics (None when
    metrics are off); a counter the server does not export is left out."""
    import urllib.request

    from framewire.connection import Connection
    from framewire.v1 import inference_pb2 as pb
    from framewire.v1 import inference_pb2_grpc

    connection = Connection(address, token=token)
    with connection.channel() as channel:
        status = inference_pb2_grpc.ModelInferenceStub(channel).GetServerStatus(
            pb.GetServerStatusRequest(), timeout=30, metadata=connection.call_metadata)
    if not status.metrics_port:
        return None
    host = address.rsplit(":", 1)[0]
    try:
        text = urllib.request.urlopen(f"http://{host}:{status.metrics_port}/metrics", timeout=30).read().decode()
    except OSError:  # metrics listen elsewhere (--metrics-host) than the gRPC address
        return None
    import json

    try:
        totals = {"frontends": int(json.loads(status.status_json)["server"].get("frontends", 1))}
    except (ValueError, KeyError, TypeError):
        totals = {"frontends": 1}
    for name, metric in METRIC_TOTALS.items():
        pattern = re.compile("^" + metric + r'\{(?=[^}]*model="' + re.escape(model) + r'")[^}]*\} (\S+)$', re.M)
        values = pattern.findall(text)
        if values:
            totals[name] = sum(float(v) for v in values)
    return totals
