"""The front end's side of model worker processes (see `worker`).

`ProcessRunner` implements the declared runner interface (`runner.Runner`)
with one worker process per instance. It forms batches here and ships each
to a worker with a free slot: the batch's compact payloads are written into
the slot's shared memory (`payloads.pack`), the `run` message carries the
offsets, and the reply carries the outputs, per-row decode errors and the
worker's timings. A worker has `1 + pipeline depth` slots, so on CUDA it
decodes the next batch while the current one computes.

Loading is explicit: `load` starts every worker and sends each its
`load` message (a `WorkerSettings`), `warm_up` its `warm` message, both
under the version's load budget (--load-timeout-seconds): a worker that
overruns it is killed and the version alone fails. A worker refuses a file
whose bytes are not the ones the version was loaded from. A worker that
dies fails its batches in flight with UNAVAILABLE; `WorkerPool` restarts it
in the background (loaded and warmed, under a budget of its own) while the
other workers serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .errors import InferenceError, LimitExceededError, ServiceError, error_from_code
from .device_model import BatchOutcome
from .ipc import Connection, SharedBuffer, WorkerGone
from .load_budget import LoadBudget
from .payloads import pack, packed_size
from .runner import BatchedRunner, BatchingSettings, WorkerStatus, answers
from .worker_pool import WorkerPool

log = logging.getLogger("framewire.worker")

WORKER_COMMAND = [sys.executable, "-m", "framewire.service.worker"]
#: A batch this small is staged on the event loop (a copy of tens of microseconds);
#: a bigger one on an I/O thread, so the loop keeps answering meanwhile.
INLINE_STAGE_BYTES = 1 << 20
#: How long a batch lost with its worker waits for the exit code it reports.
EXIT_WAIT_SECONDS = 5.0


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


class WorkerProcess:
    """One worker process, its connection and its shared-memory slots."""

    def __init__(self, name: str, index: int, settings, slots: int, handler, load_timeout: float = 120.0):
        self.name = name
        self.handler = handler
        self.index = index
        self.settings = settings
        self.slots = slots
        self.load_timeout = load_timeout
        self.warm_sizes: list[int] = []
        #: Seconds each warm-up batch size took ({size: seconds}).
        self.warm_seconds: dict[int, float] = {}
        self.proc: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.buffers: dict[int, SharedBuffer] = {}
        self.info: dict = {}
        self.shared_bytes = 0  # payload bytes written to shared memory, for metrics
        self.budget: LoadBudget | None = None
        self.restarts = 0  # starts after the first (a worker that died)
        self.warm = False
        self.stopped = False
        self._stopping = False
        #: Restarts run here (WorkerPool), never on the event loop.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{name}-{index}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.connection.alive

    def spawn_and_load(self, budget: LoadBudget) -> None:
        """Start the process and load the model in it (blocking); past the
        budget the process is killed. Warming up is `warm_up`; taking work,
        the runner's `start`."""
        self.budget = budget
        if self._stopping:
            budget.cancel()
        if self.proc is not None:  # a process ran before: this is a restart
            self.restarts += 1
        self.warm = False
        # The arguments only label the process (ps, top): what it hosts comes in messages.
        label = [self.settings.model_id, self.settings.artifact]
        self.proc = subprocess.Popen([*WORKER_COMMAND, *label], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self.connection = Connection(self.proc.stdout, self.proc.stdin, name=f"worker-{self.name}-{self.index}")
        if self.settings.nice:  # before it loads: its threads inherit the priority
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, self.settings.nice)
        self._drop_buffers()
        header = self._control({"op": "load", "settings": self.settings.to_json()}, "loading", budget)
        if header.get("op") != "loaded":
            self._stop_process()
            raise WorkerStartError(header.get("kind", "internal"), header.get("message", "worker failed to start"))
        self.info = header

    def warm_up(self, sizes: list[int], budget: LoadBudget) -> None:
        """Run each batch size once in the worker (blocking); then it is ready."""
        self.warm_sizes = list(sizes)
        if sizes:
            header = self._control({"op": "warm", "model": self.settings.model_id, "sizes": sizes}, "warming up",
                                   budget)
            if header.get("op") != "warmed":
                raise WorkerStartError(header.get("kind", "internal"), header.get("message", "warm-up failed"))
            self.warm_seconds = {int(k): float(v) for k, v in header.get("seconds", {}).items()}
        self.warm = True
        log.info("%s: worker %d (pid %d) ready on %s", self.name, self.index, self.proc.pid, self.info.get("device"))

    def restart(self) -> None:
        """Stop the process if it runs, then spawn, load and warm it again, under
        a budget of its own (WorkerPool's restart of a worker that died)."""
        self._stop_process()
        budget = LoadBudget(self.load_timeout)
        self.spawn_and_load(budget)
        self.warm_up(self.warm_sizes, budget)

    def _control(self, header: dict, doing: str, budget: LoadBudget) -> dict:
        try:
            with budget.watch(self.proc):
                reply, _ = self.connection.request(header).result()
        except WorkerGone:
            code = self.proc.wait()
            why = budget.failure()
            if why is not None:
                raise WorkerStartError("timeout", why) from None
            raise WorkerStartError("internal", f"the model worker exited with code {code} while {doing}") from None
        return reply

    def cancel_loading(self) -> None:
        """Kill the process if it is still loading, now and in any later start (the runner is closing)."""
        self._stopping = True
        if self.budget is not None:
            self.budget.cancel()

    def fits(self, slot: int, size: int) -> bool:
        """Whether `slot`'s shared memory already holds `size` bytes."""
        buffer = self.buffers.get(slot)
        return buffer is not None and buffer.size >= size

    def stage(self, slot: int, payloads: list) -> dict:
        """Write a batch into `slot`'s shared memory; its `pack` header. Blocks
        only when the slot's buffer must grow (a round trip to the worker)."""
        buffer = self._buffer(slot, packed_size(payloads))
        layout = pack(payloads, buffer.map)
        self.shared_bytes += layout["bytes"]
        return layout

    def run_on_loop(self, slot: int, layout: dict, convert: Callable[[BatchOutcome], object]) -> asyncio.Future:
        """From the event loop: run the batch staged in `slot`; the future
        resolves to `convert(outcome)`, computed on the connection's reader
        thread, or fails with the worker's error or WorkerGone."""
        return self.connection.request_on_loop(
            {"op": "run", "model": self.settings.model_id, "slot": slot, "batch": layout},
            lambda header, payload: convert(self.outcome(header, payload)))

    def outcome(self, header: dict, payload: bytes) -> BatchOutcome:
        """A `run` reply as a BatchOutcome; the worker's refusal as its error."""
        if header.get("op") == "error":
            error = LimitExceededError if header.get("kind") == "limit" else InferenceError
            raise error(header.get("message", "the model failed"))
        rows = [int(r) for r in header["rows"]]
        errors = {int(r): error_from_code(code, message) for r, (code, message) in header["errors"].items()}
        output = self.handler.decode_output(header["output"], payload) if rows else None
        return BatchOutcome(output, rows, errors, header["preprocess_us"] / 1e6, header["compute_us"] / 1e6)

    def crashed(self) -> WorkerCrashedError:
        """The error for batches lost with this worker (blocking: waits for its exit code)."""
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(EXIT_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        return WorkerCrashedError(
            f"model {self.name}: its worker process exited (code {code}) while running a batch; "
            "it is restarting, retry"
        )

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

    def status(self) -> WorkerStatus:
        """What operators see of this worker (read from any thread)."""
        proc = self.proc
        if self.stopped:
            state = "stopped"
        elif proc is not None and proc.poll() is None:
            state = "running" if self.warm else "starting"
        else:
            state = "restarting"  # WorkerPool starts a dead worker again in the background
        return WorkerStatus(instance=self.index, device=self.settings.device, state=state,
                            pid=proc.pid if proc is not None else 0, restarts=self.restarts)

    def stop(self, timeout: float = 30) -> None:
        self.stopped = True
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
                 on_batch=None, name: str = "model", load_timeout: float = 120.0,
                 load_budget: LoadBudget | None = None):
        """`load_budget` bounds the first start and warm-up of every worker
        (together); a restart gets `load_timeout` seconds of its own."""
        slots = 1 + batching.pipeline_depth
        count = len(settings) * instances_per_device
        super().__init__(name, handler, batching, on_batch=on_batch, concurrent_batches=count * slots, lanes=count)
        self.instance_count = count
        self.device_label = ",".join(s.device for s in settings)
        self.dtype_name = settings[0].dtype
        #: Called (from a worker thread) when a restarted worker finds that the
        #: version's file no longer holds the bytes it was loaded from.
        self.on_stale: Callable[[str], None] | None = None
        self._budget = load_budget or LoadBudget(load_timeout)
        self.processes = [WorkerProcess(name, i, s, slots, handler, load_timeout)
                        for i, s in enumerate(s for s in settings for _ in range(instances_per_device))]
        self._io = ThreadPoolExecutor(max_workers=count * slots, thread_name_prefix=f"worker-io-{name}")
        self._pool: WorkerPool | None = None

    @property
    def payload_bytes(self) -> int:
        """Payload bytes written to shared memory since load."""
        return sum(w.shared_bytes for w in self.processes)

    def load(self) -> None:
        """Start every worker and load the model in each (blocking)."""
        started = []
        try:
            for worker in self.processes:
                worker.spawn_and_load(self._budget)
                started.append(worker)
        except BaseException:
            for worker in started:
                worker.stop()
            raise

    def warm_up(self, sizes: list[int]) -> None:
        """Warm every worker up, all at once (blocking)."""
        futures = [self._io.submit(worker.warm_up, sizes, self._budget) for worker in self.processes]
        for future in futures:
            future.result()
        for worker in self.processes:
            self._warmed(worker.warm_seconds)

    def start(self) -> None:
        """Put the warm workers into rotation (call from the event loop)."""
        self._pool = WorkerPool(self.name, self.processes, on_stale=self._stale)
        super().start()

    async def _run_batch(self, items: list) -> list:
        """Stage the batch in a free lane's shared memory and run it there.
        On the hot path nothing leaves the event loop but the worker's
        reply, converted to answers on the connection's reader thread; a
        slot that must grow, or a batch big enough that copying it would hold
        up the loop, is staged on an I/O thread."""
        loop = asyncio.get_running_loop()
        worker, slot = await self._pool.take()
        try:
            payloads = [item.payload for item in items]
            size = packed_size(payloads)
            if size <= INLINE_STAGE_BYTES and worker.fits(slot, size):
                layout = worker.stage(slot, payloads)
            else:
                layout = await loop.run_in_executor(self._io, worker.stage, slot, payloads)
            return await worker.run_on_loop(slot, layout, lambda outcome: answers(self.handler, outcome, items))
        except (WorkerGone, OSError):
            raise await loop.run_in_executor(self._io, worker.crashed) from None
        finally:
            self._pool.give_back(worker, slot)

    def _stale(self, why: str) -> None:
        if self.on_stale is not None:
            self.on_stale(why)

    def pids(self) -> set[int]:
        """Process ids of the running workers."""
        return {w.proc.pid for w in self.processes if w.alive()}

    def workers(self) -> list[WorkerStatus]:
        """Every worker process: its pid, state and restarts."""
        return [w.status() for w in self.processes]

    def release(self) -> None:
        if self._pool is not None:
            self._pool.close()
        for worker in self.processes:  # a worker still loading is killed, not waited for
            worker.cancel_loading()
        stopping = [self._io.submit(worker.stop) for worker in self.processes]  # all at once
        for stopped in stopping:
            stopped.result()
        for worker in self.processes:
            worker.executor.shutdown(wait=True)
        self._io.shutdown(wait=True)
