"""The front end's side of model worker processes (see `worker`).

`ProcessRunner` implements the declared runner interface (`runner.Runner`)
with one worker process per instance. It forms batches here and ships each
to a worker with a free slot: the batch's compact payloads are written into
the slot's shared memory (`payloads.pack`), the `run` message carries the
offsets, and the reply carries the outputs, per-row decode errors and the
worker's timings. A worker has `1 + pipeline depth` slots, so on CUDA it
decodes the next batch while the current one computes.

Loading is explicit: `load` starts every worker and sends each its
`load` message (a `WorkerSettings`), `warm_up` its `warm` message. A
worker that dies fails its batches in flight with UNAVAILABLE and is
started again (loaded and warmed) for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from .errors import InferenceError, LimitExceededError, ServiceError, error_from_code
from .ipc import Connection, SharedBuffer, WorkerGone
from .payloads import pack, packed_size
from .device_model import BatchOutcome
from .runner import BatchedRunner, BatchingSettings, answers

log = logging.getLogger("framewire.worker")

WORKER_COMMAND = [sys.executable, "-m", "framewire.service.worker"]


class WorkerCrashedError(ServiceError):
    """The model's worker process died; it is being restarted."""

    code = "UNAVAILABLE"


class WorkerStartError(Exception):
    """A worker could not load the model; `kind` is "artifact" or "internal"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class WorkerProcess:
    """One worker process, its connection and its shared-memory slots."""

    def __init__(self, name: str, index: int, settings, slots: int, handler):
        self.name = name
        self.handler = handler
        self.index = index
        self.settings = settings
        self.slots = slots
        self.warm_sizes: list[int] = []
        self.proc: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.buffers: dict[int, SharedBuffer] = {}
        self.info: dict = {}
        self.shared_bytes = 0  # payload bytes written to shared memory, for metrics
        self._restart = threading.Lock()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.connection.alive

    def start(self) -> None:
        """Start the process and load the model (blocking)."""
        self.proc = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self.connection = Connection(self.proc.stdout, self.proc.stdin, name=f"worker-{self.name}-{self.index}")
        self._drop_buffers()
        header = self._control({"op": "load", "settings": self.settings.to_json()}, "loading")
        if header.get("op") != "loaded":
            self._stop_process()
            raise WorkerStartError(header.get("kind", "internal"), header.get("message", "worker failed to start"))
        self.info = header
        log.info("%s: worker %d (pid %d) ready on %s", self.name, self.index, self.proc.pid, header.get("device"))

    def warm_up(self, sizes: list[int]) -> None:
        """Run each batch size once in the worker (blocking)."""
        self.warm_sizes = list(sizes)
        if not sizes:
            return
        header = self._control({"op": "warm", "model": self.settings.model_id, "sizes": sizes}, "warming up")
        if header.get("op") != "warmed":
            raise WorkerStartError(header.get("kind", "internal"), header.get("message", "warm-up failed"))

    def _control(self, header: dict, doing: str) -> dict:
        try:
            reply, _ = self.connection.request(header).result()
        except WorkerGone:
            code = self.proc.wait()
            raise WorkerStartError("internal", f"the model worker exited with code {code} while {doing}") from None
        return reply

    def ensure_running(self) -> None:
        """Start a dead worker again (loaded and warmed) before it takes a batch."""
        with self._restart:
            if self.alive():
                return
            log.warning("%s: worker %d is not running; starting it again", self.name, self.index)
            self._stop_process()
            try:
                self.start()
                self.warm_up(self.warm_sizes)
            except WorkerStartError as exc:
                raise WorkerCrashedError(f"model {self.name}: its worker could not be restarted: {exc.message}") from None

    def run(self, slot: int, payloads: list) -> BatchOutcome:
        """Run one batch in `slot` (blocking; from the runner's I/O threads)."""
        self.ensure_running()
        try:
            buffer = self._buffer(slot, packed_size(payloads))
            layout = pack(payloads, buffer.map)
            self.shared_bytes += layout["bytes"]
            header, payload = self.connection.request(
                {"op": "run", "model": self.settings.model_id, "slot": slot, "batch": layout}).result()
        except (WorkerGone, OSError):
            code = self.proc.wait() if self.proc else None
            raise WorkerCrashedError(
                f"model {self.name}: its worker process exited (code {code}) while running a batch; "
                "it restarts for the next request, retry"
            ) from None
        if header.get("op") == "error":
            error = LimitExceededError if header.get("kind") == "limit" else InferenceError
            raise error(header.get("message", "the model failed"))
        rows = [int(r) for r in header["rows"]]
        errors = {int(r): error_from_code(code, message) for r, (code, message) in header["errors"].items()}
        output = self.handler.decode_output(header["output"], payload) if rows else None
        return BatchOutcome(output, rows, errors, header["preprocess_us"] / 1e6, header["compute_us"] / 1e6)

    def _buffer(self, slot: int, size: int) -> SharedBuffer:
        buffer = self.buffers.get(slot)
        if buffer is not None and buffer.size >= size:
            return buffer
        if buffer is not None:
            buffer.close()
        buffer = self.buffers[slot] = SharedBuffer(max(size, int(size * 1.5)))
        try:
            reply, _ = self.connection.request(
                {"op": "buffer", "slot": slot, "path": buffer.path, "size": buffer.size}).result()
            if reply.get("op") != "buffer_ok":
                raise WorkerGone(f"worker refused the buffer: {reply}")
        finally:
            buffer.unlink()
        return buffer

    def _drop_buffers(self) -> None:
        for buffer in self.buffers.values():
            buffer.close()
        self.buffers.clear()

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            try:
                self.connection.send({"op": "stop"})
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._stop_process()

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        self._drop_buffers()


class ProcessRunner(BatchedRunner):
    """Instances of a model as worker processes (see the module doc).

    `settings` holds one WorkerSettings per device; `instances_per_device`
    workers are started for each.
    """

    def __init__(self, handler, settings: list, *, instances_per_device: int, batching: BatchingSettings,
                 on_batch=None, name: str = "model"):
        slots = 1 + batching.pipeline_depth
        count = len(settings) * instances_per_device
        super().__init__(name, handler, batching, on_batch=on_batch, concurrent_batches=count * slots)
        self.instance_count = count
        self.device_label = ",".join(s.device for s in settings)
        self.dtype_name = settings[0].dtype
        self.workers = [WorkerProcess(name, i, s, slots, handler)
                        for i, s in enumerate(s for s in settings for _ in range(instances_per_device))]
        self._io = ThreadPoolExecutor(max_workers=count * slots, thread_name_prefix=f"worker-io-{name}")
        self._free: asyncio.Queue | None = None

    @property
    def shared_bytes(self) -> int:
        """Payload bytes written to shared memory since load."""
        return sum(w.shared_bytes for w in self.workers)

    def load(self) -> None:
        """Start every worker and load the model in each (blocking)."""
        started = []
        try:
            for worker in self.workers:
                worker.start()
                started.append(worker)
        except BaseException:
            for worker in started:
                worker.stop()
            raise

    def warm_up(self, sizes: list[int]) -> None:
        """Warm every worker up, all at once (blocking)."""
        futures = [self._io.submit(worker.warm_up, sizes) for worker in self.workers]
        for future in futures:
            future.result()

    def start(self) -> None:
        self._free = asyncio.Queue()
        for slot in range(self.workers[0].slots if self.workers else 0):
            for worker in self.workers:
                self._free.put_nowait((worker, slot))
        super().start()

    async def _run_batch(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        worker, slot = await self._free.get()
        try:
            return await loop.run_in_executor(self._io, self._run_on, worker, slot, items)
        finally:
            self._free.put_nowait((worker, slot))

    def _run_on(self, worker: WorkerProcess, slot: int, items: list) -> list:
        return answers(self.handler, worker.run(slot, [item.payload for item in items]), items)

    def pids(self) -> set[int]:
        """Process ids of the running workers."""
        return {w.proc.pid for w in self.workers if w.alive()}

    def release(self) -> None:
        stopping = [self._io.submit(worker.stop) for worker in self.workers]  # all at once
        for stopped in stopping:
            stopped.result()
        self._io.shutdown(wait=True)
