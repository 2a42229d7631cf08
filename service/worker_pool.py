"""Which instances of a model version take traffic.

An instance is the version's model in one worker process (shared with the
other versions on its device, see `device_workers`); it holds up to `slots`
batches at once (its shared-memory slots), so the pool hands out lanes:
(worker, slot). A batch goes to a free lane of a worker that is alive. A
worker found dead (killed
while idle, or dying under a batch) leaves the rotation at once and is
restarted in the background, in its own thread: batches go to the live
workers meanwhile, and when none is live a batch fails at once with
UNAVAILABLE instead of waiting for a restart. A restarted worker loads and
warms up before it rejoins, so it takes traffic only once warm. A restart
that fails is retried with backoff, except when the version's bytes are
gone (`on_stale`): then the version is reloaded or retired, not restarted.
Every version's pool asks for the restart of a process they share; the
process starts again once, with all of them (`SharedWorker.bring_up`).

Everything but the restart thread runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import Callable

from .errors import ServiceError

log = logging.getLogger("framewire.worker")

#: Restart failures meaning the version's bytes can no longer be served.
STALE_KINDS = ("changed", "artifact")
MAX_RETRY_SECONDS = 30.0


class NoLiveWorkerError(ServiceError):
    """Every worker of the model is restarting; retrying shortly will work."""

    code = "UNAVAILABLE"


class WorkerPool:
    """Free, busy and restarting workers of one model version (see the module doc).

    A worker has `index`, `slots`, `executor` (a thread of its own, for
    restarts), `alive()` and `spawn()` (start and warm up; raises an
    exception with a `kind`)."""

    def __init__(self, name: str, workers: list, *, on_stale: Callable[[str], None]):
        self.name = name
        self.workers = list(workers)
        self.on_stale = on_stale
        self._loop = asyncio.get_running_loop()
        # Slot-major: a second batch goes to another worker before it doubles up on one.
        self._free: deque = deque((w, s) for s in range(max((w.slots for w in self.workers), default=0))
                                  for w in self.workers if s < w.slots)
        self._busy: set = set()
        self._restarting: set = set()
        self._live = len(self.workers)
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = threading.Event()

    @property
    def restarting(self) -> int:
        return len(self._restarting)

    async def take(self):
        """A free lane (worker, slot) of a live worker; waits while live ones
        are busy, fails at once when none is live."""
        while True:
            while self._free:
                worker, slot = self._free.popleft()
                if worker.alive():
                    self._busy.add((worker, slot))
                    return worker, slot
                self._lose(worker)
            if self._live == 0:
                raise NoLiveWorkerError(
                    f"model {self.name}: no worker process is running ({self.restarting} restarting after a "
                    "crash); retry shortly"
                )
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def give_back(self, worker, slot: int) -> None:
        """Return a lane after its batch; a dead worker is restarted."""
        self._busy.discard((worker, slot))
        if worker in self._restarting:
            return  # it rejoins with all its idle lanes
        if worker.alive():
            self._free.append((worker, slot))
            self._wake()
        else:
            self._lose(worker)

    def close(self) -> None:
        """Stop restarting (call before stopping the workers)."""
        self._closed.set()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _lose(self, worker) -> None:
        if worker in self._restarting:
            return
        self._restarting.add(worker)
        self._free = deque(lane for lane in self._free if lane[0] is not worker)
        self._live -= 1
        self._wake()  # waiters see whether any worker is still live
        if self._closed.is_set():
            return
        log.warning("%s: worker %d is not running; restarting it while the others serve", self.name, worker.index)
        worker.executor.submit(self._restart, worker)

    def _restart(self, worker) -> None:
        """In the worker's thread: start it again until it is warm, then let it rejoin."""
        delay = 1.0
        while not self._closed.is_set():
            try:
                worker.restart()
            except Exception as exc:  # any failure to start is retried, unless the bytes are gone
                message = getattr(exc, "message", str(exc))
                if getattr(exc, "kind", "") in STALE_KINDS:
                    log.error("%s: worker %d cannot be restarted: %s", self.name, worker.index, message)
                    self.on_stale(message)
                    return
                if self._closed.is_set():
                    return
                log.error("%s: worker %d could not be restarted (%s); trying again in %.0fs", self.name,
                          worker.index, message, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            with contextlib.suppress(RuntimeError):  # the event loop is gone: the server has stopped
                self._loop.call_soon_threadsafe(self._rejoin, worker)
            return

    def _rejoin(self, worker) -> None:
        self._restarting.discard(worker)
        self._live += 1
        self._free.extend((worker, s) for s in range(worker.slots) if (worker, s) not in self._busy)
        self._wake()
