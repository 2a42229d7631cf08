"""The front-end side of model worker processes (see `worker`).

`ProcessRunner` has the interface of the in-process `ModelRunner` as the
model path uses it (`instances`, `warm_up`, `start`, `run`, `close`): each
instance is a worker process; a batch is written into the instance's shared
buffer and run there. A worker that dies fails its batch with UNAVAILABLE and
is started again for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import InferenceError, LimitExceededError, ServiceError
from .ipc import SharedBuffer, WorkerGone, read_message, write_message
from .runner import Finish, _unbind

log = logging.getLogger("framewire.worker")

FLOAT_BYTES = 4


class WorkerCrashedError(ServiceError):
    """The model's worker process died; it is being restarted."""

    code = "UNAVAILABLE"


class WorkerStartError(Exception):
    """A worker could not load the model; `kind` is "artifact" or "internal"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class ModelWorker:
    """One worker process and the thread that talks to it."""

    def __init__(self, name: str, command: list[str], index: int, handler):
        self.name = name
        self.handler = handler
        self.command = command
        self.index = index
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{name}-{index}")
        self.proc: subprocess.Popen | None = None
        self.buffer: SharedBuffer | None = None
        self.view: Any = None
        self.info: dict = {}

    # Everything below runs in this worker's thread (or at start-up).

    def spawn(self) -> None:
        """Start the process and wait until it has loaded and warmed up."""
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        try:
            header, _ = read_message(self.proc.stdout)
        except WorkerGone:
            code = self.proc.wait()
            raise WorkerStartError("internal", f"the model worker exited with code {code} while loading") from None
        if header.get("op") != "ready":
            self.proc.wait()
            raise WorkerStartError(header.get("kind", "internal"), header.get("message", "worker failed to start"))
        self.info = header
        self._drop_buffer()
        log.info("%s: worker %d (pid %d) ready on %s", self.name, self.index, self.proc.pid, header.get("device"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run_batch(self, items: list, finish: Finish | None) -> list:
        if not self.alive():
            log.warning("%s: worker %d is not running; starting it again", self.name, self.index)
            try:
                self.spawn()
            except WorkerStartError as exc:
                raise WorkerCrashedError(f"model {self.name}: its worker could not be restarted: {exc.message}") from None
        try:
            header, payload = self._roundtrip(items)
        except (WorkerGone, BrokenPipeError, OSError):
            code = self.proc.wait() if self.proc else None
            self._drop_buffer()
            raise WorkerCrashedError(
                f"model {self.name}: its worker process exited (code {code}) while running a batch; "
                "it restarts for the next request, retry"
            ) from None
        if header.get("op") == "error":
            error = LimitExceededError if header.get("kind") == "limit" else InferenceError
            raise error(header.get("message", "the model failed"))
        output = self.handler.decode_output(header, payload)
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

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            try:
                write_message(self.proc.stdin, {"op": "stop"})
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._drop_buffer()


class ProcessRunner:
    """Instances of a model as worker processes (see the module doc)."""

    def __init__(self, name: str, artifact_path: str, *, handler, devices: tuple[str, ...], dtype: str,
                 instances_per_device: int = 1, channels_last: bool = True, cpu_threads: int = 0,
                 max_artifact_bytes: int = 2**31 - 1, log_level: str = "info", log_format: str = "text",
                 trusted_keys: str = "", require_signed: bool = False, cuda_graphs: bool = False):
        self.name = name
        self.handler = handler
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
        ]
        self.instances = [
            ModelWorker(name, [], i, handler) for i, _ in enumerate(d for d in devices for _ in range(instances_per_device))
        ]
        self._instance_devices = [d for d in devices for _ in range(instances_per_device)]
        self._free: asyncio.Queue | None = None

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
                worker.spawn()
                started.append(worker)
        except BaseException:
            for worker in started:
                worker.stop()
            raise

    def start(self) -> None:
        self._free = asyncio.Queue()
        for worker in self.instances:
            self._free.put_nowait(worker)

    async def run(self, items: list, finish: Finish | None = None) -> list:
        loop = asyncio.get_running_loop()
        worker = await self._free.get()
        try:
            return await loop.run_in_executor(worker.executor, worker.run_batch, items, finish)
        finally:
            self._free.put_nowait(worker)

    def pids(self) -> set[int]:
        """Process ids of the running workers."""
        return {w.proc.pid for w in self.instances if w.alive()}

    def close(self) -> None:
        stopping = [worker.executor.submit(worker.stop) for worker in self.instances]  # all at once
        for worker, stopped in zip(self.instances, stopping):
            stopped.result()
            worker.executor.shutdown(wait=True)
