"""The front end's side of model worker processes (see `worker`).

`ProcessRunner` implements the declared runner interface (`runner.Runner`)
with one instance per worker process it is placed on. The processes are the
server's (`device_workers.DeviceWorkers`: per GPU one, on the CPU the
instance plan's count) and host every version placed on their device; a
`WorkerProcess` is one version's instance in one of them. The runner forms
batches here and ships each to an instance with a free slot: the batch's
compact payloads are written into the slot's shared memory (`payloads.pack`;
each version has its own slots in each process), the `run` message carries
the offsets, and the reply carries the outputs, per-row decode errors and
the worker's timings. An instance has `1 + pipeline depth` slots, so on CUDA
a worker decodes the next batch while the current one computes.

Loading is explicit: `load` starts the processes that are not running yet
and sends each its `load` message (a `WorkerSettings`), `warm_up` its `warm`
message, both under the version's load budget (--load-timeout-seconds): a
load that overruns it kills the process, the version alone fails, and the
process comes back for the versions it hosted (see `device_workers`). A
worker refuses a file whose bytes are not the ones the version was loaded
from. A worker that dies fails its batches in flight with UNAVAILABLE;
`WorkerPool` has it restarted in the background (once for every version it
hosted, each loaded and warmed again) while the other workers serve.
`release` unloads the version from its processes.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .errors import InferenceError, LimitExceededError, ServiceError, error_from_code
from .device_model import BatchOutcome
from .device_workers import WORKER_COMMAND, DeviceWorkers, SharedWorker, WorkerStartError
from .ipc import SharedBuffer, WorkerGone
from .load_budget import LoadBudget
from .payloads import pack, packed_size
from .runner import BatchedRunner, BatchingSettings, WorkerStatus, answers
from .worker_pool import WorkerPool

log = logging.getLogger("framewire.worker")

#: A batch this small is staged on the event loop (a copy of tens of microseconds);
#: a bigger one on an I/O thread, so the loop keeps answering meanwhile.
INLINE_STAGE_BYTES = 1 << 20
#: How long a batch lost with its worker waits for the exit code it reports.
EXIT_WAIT_SECONDS = 5.0

__all__ = ["WORKER_COMMAND", "ProcessRunner", "WorkerCrashedError", "WorkerProcess", "WorkerStartError"]


class WorkerCrashedError(ServiceError):
    """The model's worker process died; it is being restarted."""

    code = "UNAVAILABLE"


class WorkerProcess:
    """One version's instance in a worker process (`SharedWorker`): its model
    there, and its shared-memory slots."""

    def __init__(self, name: str, index: int, settings, slots: int, handler, load_timeout: float = 120.0,
                 shared: SharedWorker | None = None):
        self.name = name
        self.handler = handler
        self.index = index
        self.settings = settings
        self.slots = slots
        self.load_timeout = load_timeout
        self.shared = shared if shared is not None else SharedWorker(settings.device, index)
        self.warm_sizes: list[int] = []
        #: Seconds each warm-up batch size took ({size: seconds}).
        self.warm_seconds: dict[int, float] = {}
        #: The SharedWorker generation (process) the model is loaded in; None when not loaded.
        self.generation: int | None = None
        self.buffers: dict[int, SharedBuffer] = {}
        self.info: dict = {}
        self.shared_bytes = 0  # payload bytes written to shared memory, for metrics
        #: Forward passes that ran this instance's batches; a pass the worker
        #: merged with other front ends' batches counts as its share (1/merged).
        self.device_forwards = 0.0
        #: With workers shared by several front ends: the largest batch the
        #: worker may merge this version's batches into (0: never merged).
        self.merge_rows = 0
        self.budget: LoadBudget | None = None
        self.warm = False
        self.stopped = False
        self._stopping = False
        #: Restarts run here (WorkerPool), never on the event loop.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{name}-{index}")

    @property
    def proc(self):
        """The process this instance runs in (shared with other versions)."""
        return self.shared.proc

    @property
    def connection(self):
        return self.shared.connection

    @property
    def restarts(self) -> int:
        """Starts of its process after one died."""
        return self.shared.restarts

    @property
    def leaving(self) -> bool:
        """Whether its runner is closing (it is not reloaded after a crash)."""
        return self._stopping

    def alive(self) -> bool:
        """Whether its process runs with this version loaded in it."""
        return self.generation is not None and self.generation == self.shared.generation and self.shared.alive()

    def spawn_and_load(self, budget: LoadBudget) -> None:
        """Load the model in its worker process, starting the process if it is
        not running (blocking). Past the budget the process is killed, and
        started again for the other versions it hosts before this one fails.
        Warming up is `warm_up`; taking work, the runner's `start`."""
        self.budget = budget
        if self._stopping:
            budget.cancel()
        with self.shared.lock:
            self.shared.ensure_running()
            try:
                self._load_here(budget)
            except WorkerStartError:
                self._revive_others(budget)
                raise
            self.shared.host(self)

    def warm_up(self, sizes: list[int], budget: LoadBudget) -> None:
        """Run each batch size once in the worker (blocking); then it is ready."""
        self.warm_sizes = list(sizes)
        with self.shared.lock:
            if not self.alive():
                raise WorkerStartError("internal", f"the model worker exited before {self.name} was warmed up")
            try:
                self._warm_here(budget)
            except WorkerStartError:
                self._revive_others(budget)
                raise
        log.info("%s: worker %d (pid %d) ready on %s", self.name, self.index, self.proc.pid, self.info.get("device"))

    def reload_here(self) -> None:
        """Load and warm the model again in the worker's current process, under
        a budget of its own (`SharedWorker.bring_up`, lock held)."""
        budget = LoadBudget(self.load_timeout)
        self.budget = budget
        if self._stopping:
            budget.cancel()
        self._load_here(budget)
        self._warm_here(budget)
        log.info("%s: worker %d (pid %d) ready on %s", self.name, self.index, self.proc.pid, self.info.get("device"))

    def restart(self) -> None:
        """Have the worker running with this version loaded and warm again:
        its process is started again once for every version it hosted
        (WorkerPool's restart of a worker that died)."""
        self.shared.bring_up(self)

    def _load_here(self, budget: LoadBudget) -> None:
        self.warm = False
        self.generation = None
        self._drop_buffers()
        header = self._control({"op": "load", "settings": self.settings.to_json()}, "loading", budget)
        if header.get("op") != "loaded":
            raise WorkerStartError(header.get("kind", "internal"), header.get("message", "worker failed to start"))
        self.info = header
        self.generation = self.shared.generation

    def _warm_here(self, budget: LoadBudget) -> None:
        sizes = self.warm_sizes
        if sizes:
            header = self._control({"op": "warm", "model": self.settings.model_id, "sizes": sizes}, "warming up",
                                   budget)
            if header.get("op") != "warmed":
                raise WorkerStartError(header.get("kind", "internal"), header.get("message", "warm-up failed"))
            self.warm_seconds = {int(k): float(v) for k, v in header.get("seconds", {}).items()}
        self.warm = True

    def _revive_others(self, budget: LoadBudget) -> None:
        """This version's load or warm-up failed (lock held): it leaves the
        process (unloaded there if it still runs), and if the failure killed
        the process, it starts again for the versions it hosts, unless the
        server is stopping."""
        self.shared.unload(self)
        if not budget.cancelled and not self._stopping:
            self.shared.revive()

    def _control(self, header: dict, doing: str, budget: LoadBudget) -> dict:
        proc = self.proc
        try:
            with budget.watch(proc):
                reply, _ = self.connection.request(header).result()
        except WorkerGone:
            code = proc.wait()
            why = budget.failure()
            if why is not None:
                raise WorkerStartError("timeout", why) from None
            raise WorkerStartError("internal", f"the model worker exited with code {code} while {doing}") from None
        return reply

    def cancel_loading(self) -> None:
        """Kill the process if this version is still loading in it, now and in
        any later start (the runner is closing)."""
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
        header = {"op": "run", "model": self.settings.model_id, "slot": slot, "batch": layout}
        if self.merge_rows:
            header["max_rows"] = self.merge_rows
        return self.connection.request_on_loop(header, lambda header, payload: convert(self.outcome(header, payload)))

    def outcome(self, header: dict, payload: bytes) -> BatchOutcome:
        """A `run` reply as a BatchOutcome; the worker's refusal as its error."""
        if header.get("op") == "error":
            error = LimitExceededError if header.get("kind") == "limit" else InferenceError
            raise error(header.get("message", "the model failed"))
        self.device_forwards += 1 / max(1, int(header.get("merged", 1)))
        rows = [int(r) for r in header["rows"]]
        errors = {int(r): error_from_code(code, message) for r, (code, message) in header["errors"].items()}
        output = self.handler.decode_output(header["output"], payload) if rows else None
        return BatchOutcome(output, rows, errors, header["preprocess_us"] / 1e6, header["compute_us"] / 1e6)

    def crashed(self) -> WorkerCrashedError:
        """The error for batches lost with this worker (blocking: waits for its exit code)."""
        code = None
        if self.proc is not None and not self.shared.alive():  # alive: already restarted for another version
            try:
                code = self.proc.wait(EXIT_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        return WorkerCrashedError(
            f"model {self.name}: its worker process exited{'' if code is None else f' (code {code})'} while "
            "running a batch; it is restarting, retry"
        )

    def _buffer(self, slot: int, size: int) -> SharedBuffer:
        buffer = self.buffers.get(slot)
        if buffer is not None and buffer.size >= size:
            return buffer
        if buffer is not None:
            buffer.close()
        buffer = self.buffers[slot] = SharedBuffer(max(size, int(size * 1.5)))
        try:
            reply, _ = self.connection.request({"op": "buffer", "model": self.settings.model_id, "slot": slot,
                                                "path": buffer.path, "size": buffer.size}).result()
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
        """What operators see of this instance (read from any thread)."""
        proc = self.proc
        if self.stopped:
            state = "stopped"
        elif self.alive():
            state = "running" if self.warm else "starting"
        else:
            state = "restarting"  # WorkerPool starts a dead worker again in the background
        return WorkerStatus(instance=self.index, device=self.settings.device, state=state,
                            pid=proc.pid if proc is not None else 0, restarts=self.restarts)

    def stop(self, timeout: float = 30) -> None:
        """Unload the version from its worker (the process stops once it hosts nothing)."""
        self.stopped = True
        self.shared.leave(self)
        self._drop_buffers()


class ProcessRunner(BatchedRunner):
    """Instances of a model in worker processes (see the module doc).

    `settings` holds one WorkerSettings per device; `instances_per_device`
    instances run on each, in the server's worker processes of that device
    (`workers`, a DeviceWorkers) or, without one, in processes of their own.
    """

    def __init__(self, handler, settings: list, *, instances_per_device: int, batching: BatchingSettings,
                 on_batch=None, name: str = "model", load_timeout: float = 120.0,
                 load_budget: LoadBudget | None = None, workers: DeviceWorkers | None = None):
        """`load_budget` bounds the first start and warm-up of every worker
        (together); a restart gets `load_timeout` seconds of its own."""
        if workers is not None:
            instances_per_device = min(instances_per_device, workers.per_device)
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
        placed = [(s, shared) for s in settings for shared in
                  (workers.place(s.device, instances_per_device) if workers is not None
                   else [None] * instances_per_device)]
        self.processes = [WorkerProcess(name, i, s, slots, handler, load_timeout, shared)
                          for i, (s, shared) in enumerate(placed)]
        if workers is not None and workers.attached:  # other front ends' batches of this version may join ours
            for process in self.processes:
                process.merge_rows = batching.max_batch_size
        self._io = ThreadPoolExecutor(max_workers=count * slots, thread_name_prefix=f"worker-io-{name}")
        self._pool: WorkerPool | None = None

    @property
    def payload_bytes(self) -> int:
        """Payload bytes written to shared memory since load."""
        return sum(w.shared_bytes for w in self.processes)

    @property
    def device_forwards(self) -> float:
        """Forward passes that ran this version's batches (a merged pass counts as this runner's share)."""
        return sum(w.device_forwards for w in self.processes)

    def load(self) -> None:
        """Load the model in each of its workers, starting those not running (blocking)."""
        try:
            for worker in self.processes:
                worker.spawn_and_load(self._budget)
        except BaseException:
            for worker in self.processes:
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
        """Unload the version from its workers (blocking); a worker left hosting nothing stops."""
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
