"""The front-end side of model worker processes (see `worker`).

`ProcessRunner` has the interface of the in-process `ModelRunner` as the
model path uses it (`instances`, `warm_up`, `start`, `run`, `close`): each
instance is a worker process; a batch is written into the instance's shared
buffer and run there. A worker that dies fails its batch with UNAVAILABLE;
`WorkerPool` restarts it in the background while the others serve.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from .errors import InferenceError, LimitExceededError, ServiceError
from .ipc import SharedBuffer, WorkerGone, read_message, write_message
from .load_budget import LoadBudget
from .runner import Finish, WorkerStatus, _unbind
from .worker_pool import WorkerPool

log = logging.getLogger("framewire.worker")

FLOAT_BYTES = 4


class WorkerCrashedError(ServiceError):
    """The model's worker process died; it is being restarted."""

    code = "UNAVAILABLE"


class WorkerStartError(Exception):
    """A worker could not load the model; `kind` is "artifact", "changed"
    (the file is not the bytes the version was loaded from), "timeout" or
    "internal"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class ModelWorker:
    """One worker process and the thread that talks to it."""

    def __init__(self, name: str, command: list[str], index: int, load_timeout: float = 120.0):
        self.name = name
        self.command = command
        self.index = index
        self.load_timeout = load_timeout
        self.budget: LoadBudget | None = None
        self._stopping = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{name}-{index}")
        self.proc: subprocess.Popen | None = None
        self.buffer: SharedBuffer | None = None
        self.view: Any = None
        self.info: dict = {}
        self.restarts = 0
        self.warm = False
        self.stopped = False

    # Everything below runs in this worker's thread (or at start-up).

    def spawn(self, budget: LoadBudget | None = None) -> None:
        """Start the process and wait until it has loaded and warmed up; the
        budget (by default `load_timeout` seconds) kills it if it takes longer."""
        self.budget = budget = budget or LoadBudget(self.load_timeout)
        if self._stopping:
            budget.cancel()
        if self.proc is not None:  # a process ran before: this is a restart
            self.restarts += 1
        self.warm = False
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        try:
            with budget.watch(self.proc):
                header, _ = read_message(self.proc.stdout)
        except WorkerGone:
            code = self.proc.wait()
            why = budget.failure()
            if why is not None:
                raise WorkerStartError("timeout", why) from None
            raise WorkerStartError("internal", f"the model worker exited with code {code} while loading") from None
        if header.get("op") != "ready":
            self.proc.wait()
            raise WorkerStartError(header.get("kind", "internal"), header.get("message", "worker failed to start"))
        self.info = header
        self._drop_buffer()
        self.warm = True
        log.info("%s: worker %d (pid %d) ready on %s", self.name, self.index, self.proc.pid, header.get("device"))

    def cancel_loading(self) -> None:
        """Kill the process if it is still loading, now and in any later spawn (the runner is closing)."""
        self._stopping = True
        if self.budget is not None:
            self.budget.cancel()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run_batch(self, items: list, finish: Finish | None) -> list:
        try:
            header, payload = self._roundtrip(items)
        except (WorkerGone, BrokenPipeError, OSError):
            code = self.proc.wait() if self.proc else None
            self._drop_buffer()
            raise WorkerCrashedError(
                f"model {self.name}: its worker process exited (code {code}) while running a batch; "
                "it is restarting, retry"
            ) from None
        if header.get("op") == "error":
            error = LimitExceededError if header.get("kind") == "limit" else InferenceError
            raise error(header.get("message", "the model failed"))
        output = decode_output(header, payload)
        return (finish or _unbind)(output)

    def _roundtrip(self, items: list) -> tuple[dict, bytes]:
        shapes = [tuple(t.shape) for t in items]
        sizes = [int(np.prod(s)) for s in shapes]
        total = sum(sizes) * FLOAT_BYTES
        if self.buffer is None or self.buffer.size < total:
            self._new_buffer(max(total, int(total * 1.5)))
        tensors, offset = [], 0
        for item, shape, size in zip(items, shapes, sizes):
            start = offset // FLOAT_BYTES
            np.copyto(self.view[start : start + size].reshape(shape), item.numpy())
            tensors.append({"offset": offset, "shape": list(shape)})
            offset += size * FLOAT_BYTES
        write_message(self.proc.stdin, {"op": "run", "tensors": tensors})
        return read_message(self.proc.stdout)

    def _new_buffer(self, size: int) -> None:
        self._drop_buffer()
        self.buffer = SharedBuffer(size)
        try:
            write_message(self.proc.stdin, {"op": "buffer", "path": self.buffer.path, "size": self.buffer.size})
            header, _ = read_message(self.proc.stdout)
            if header.get("op") != "buffer_ok":
                raise WorkerGone(f"worker refused the buffer: {header}")
        finally:
            self.buffer.unlink()
        self.view = np.frombuffer(self.buffer.map, dtype=np.float32)

    def _drop_buffer(self) -> None:
        self.view = None
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None

    def status(self, device: str) -> WorkerStatus:
        """What operators see of this worker (read from any thread)."""
        proc = self.proc
        if self.stopped:
            state = "stopped"
        elif proc is not None and proc.poll() is None:
            state = "running" if self.warm else "starting"
        else:
            state = "restarting"  # WorkerPool starts a dead worker again in the background
        return WorkerStatus(instance=self.index, device=device, state=state,
                            pid=proc.pid if proc is not None else 0, restarts=self.restarts)

    def stop(self, timeout: float = 30) -> None:
        self.stopped = True
        if self.alive():
            try:
                write_message(self.proc.stdin, {"op": "stop"})
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._drop_buffer()


def decode_output(header: dict, payload: bytes):
    """A worker's reply as a float32 tensor [B, ...] or a list of detection dicts."""
    import torch

    if header.get("kind") == "tensor":
        return torch.frombuffer(bytearray(payload), dtype=torch.float32).reshape(header["shape"])
    out, offset = [], 0
    for n in header["counts"]:
        boxes = np.frombuffer(payload, np.float32, n * 4, offset).reshape(n, 4)
        offset += n * 16
        labels = np.frombuffer(payload, np.int64, n, offset)
        offset += n * 8
        scores = np.frombuffer(payload, np.float32, n, offset)
        offset += n * 4
        out.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "scores": torch.tensor(scores)})
    return out


class ProcessRunner:
    """Instances of a model as worker processes (see the module doc)."""

    def __init__(self, name: str, artifact_path: str, *, task: str, devices: tuple[str, ...], dtype: str,
                 instances_per_device: int = 1, channels_last: bool = True, cpu_threads: int = 0,
                 max_artifact_bytes: int = 2**31 - 1, log_level: str = "info", log_format: str = "text",
                 trusted_keys: str = "", require_signed: bool = False, cuda_graphs: bool = False,
                 load_timeout: float = 120.0, load_budget: LoadBudget | None = None, file_sha256: str = ""):
        """`load_budget` bounds the first start of every worker (together);
        a restart gets `load_timeout` seconds of its own. `file_sha256` is the
        digest of the bytes the version was loaded from: a worker (a restarted
        one too) refuses any other bytes, and `on_stale(reason)` is called."""
        self.name = name
        #: Called (from a worker thread) when a restarted worker finds that the
        #: version's file no longer holds the bytes it was loaded from.
        self.on_stale: Callable[[str], None] | None = None
        self._budget = load_budget or LoadBudget(load_timeout)
        self.task = task
        self.dtype_name = dtype
        self.devices = devices
        self._base = [
            sys.executable, "-m", "framewire.service.worker", "--artifact", str(artifact_path),
            "--dtype", dtype, "--channels-last" if channels_last else "--no-channels-last",
            "--threads", str(cpu_threads), "--max-artifact-bytes", str(max_artifact_bytes),
            "--log-level", log_level, "--log-format", log_format,
            *(["--trusted-keys", trusted_keys] if trusted_keys else []),
            *(["--require-signed"] if require_signed else []),
            *(["--cuda-graphs"] if cuda_graphs else []),
            *(["--expect-sha256", file_sha256] if file_sha256 else []),
        ]
        self.instances = [
            ModelWorker(name, [], i, load_timeout)
            for i, _ in enumerate(d for d in devices for _ in range(instances_per_device))
        ]
        self._instance_devices = [d for d in devices for _ in range(instances_per_device)]
        self._pool: WorkerPool | None = None

    @property
    def device_label(self) -> str:
        return ",".join(self.devices)

    def warm_up(self, sizes: list[int], example_shape: tuple[int, ...]) -> None:
        """Start every worker; each loads the model and runs `sizes` before it is ready."""
        warm = ["--warmup-sizes", ",".join(map(str, sizes)), "--warmup-shape", ",".join(map(str, example_shape))]
        for worker, device in zip(self.instances, self._instance_devices):
            worker.command = [*self._base, "--device", device, *(warm if sizes else [])]
        started = []
        try:
            for worker in self.instances:
                worker.spawn(self._budget)
                started.append(worker)
        except BaseException:
            for worker in started:
                worker.stop()
            raise

    def start(self) -> None:
        """Put the warm workers into rotation (call from the event loop)."""
        self._pool = WorkerPool(self.name, self.instances, on_stale=self._stale)

    async def run(self, items: list, finish: Finish | None = None) -> list:
        """Run a batch on a free live worker (see WorkerPool)."""
        worker = await self._pool.take()
        try:
            return await asyncio.get_running_loop().run_in_executor(worker.executor, worker.run_batch, items, finish)
        finally:
            self._pool.give_back(worker)

    def _stale(self, why: str) -> None:
        if self.on_stale is not None:
            self.on_stale(why)

    def pids(self) -> set[int]:
        """Process ids of the running workers."""
        return {w.proc.pid for w in self.instances if w.alive()}

    def workers(self) -> list[WorkerStatus]:
        """Every worker process: its pid, state and restarts."""
        return [w.status(d) for w, d in zip(self.instances, self._instance_devices)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        for worker in self.instances:  # a worker still loading is killed, not waited for
            worker.cancel_loading()
        stopping = [worker.executor.submit(worker.stop) for worker in self.instances]  # all at once
        for worker, stopped in zip(self.instances, stopping):
            stopped.result()
            worker.executor.shutdown(wait=True)
