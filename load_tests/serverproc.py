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
