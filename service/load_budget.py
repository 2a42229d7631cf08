"""The time budget of loading one model version.

A load runs in a process of its own (a model worker, or with `--runner
thread` a checking child), because a load that hangs may hold the GIL in
one C call, where no thread can interrupt it. `LoadBudget` watches those
processes from outside: when the budget runs out, or the server cancels the
load because it is stopping, the watched process group is killed, so the
thread waiting on it sees the pipe close at once and the load fails alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Iterator

from framewire.exporter.child_load import overrun_message


class LoadBudget:
    """`seconds` from now to load one version (see the module doc)."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self.deadline = clock() + seconds
        self.expired = False
        self.cancelled = False
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.0, self.deadline - self._clock())

    @contextlib.contextmanager
    def watch(self, proc: subprocess.Popen) -> Iterator[None]:
        """Kill `proc` (started with start_new_session) if the budget runs out
        or is cancelled while the block runs."""
        with self._lock:
            self._procs.add(proc)
            stopped = self.cancelled
        timer = threading.Timer(self.remaining(), self._expire)
        timer.daemon = True
        timer.start()
        if stopped:
            _kill(proc)
        try:
            yield
        finally:
            timer.cancel()
            with self._lock:
                self._procs.discard(proc)

    def cancel(self) -> None:
        """Stop the load now (the server is stopping)."""
        self._stop("cancelled")

    def _expire(self) -> None:
        self._stop("expired")

    def _stop(self, why: str) -> None:
        with self._lock:
            setattr(self, why, True)
            procs = list(self._procs)
        for proc in procs:
            _kill(proc)

    def failure(self) -> str | None:
        """Why the load was stopped, or None if it was not."""
        if self.cancelled:
            return "loading was stopped: the server is stopping"
        if self.expired:
            return overrun_message(self.seconds)
        return None


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
