"""Worker processes per device, shared by every model version placed there.

A worker process costs ~550-650 MB before any weights (torch, its kernels,
the decode libraries), and on CUDA one context of hundreds of MB of device
memory. So the server owns a fixed set of them, `DeviceWorkers`: per GPU one
process (one CUDA context); on the CPU as many single-threaded ones as the
CPU instance plan gives (two on two cores, which kept the cores busy where
one two-threaded process did not). Every model version on that device is
loaded into them (`load` messages keyed by model id, see `worker`): four
small models on two cores are 2 worker processes, not 8.

A version's `ProcessRunner` still has its own batcher and lanes; each of its
instances is a `WorkerProcess` (worker_runner): its model in one
`SharedWorker`, with its own shared-memory slots there. What the process
does (`SharedWorker`) and what each version has in it (`WorkerProcess`) are
kept apart:

* **Crash isolation stays per process.** A model whose forward raises fails
  only its batch (the worker replies `error` and goes on). A process that
  dies fails the batches in flight on it, for every model, with
  UNAVAILABLE; each version's `WorkerPool` sees its lanes there dead and asks
  for a restart, and the first to ask starts the process again and reloads
  and warms every version it hosted (`bring_up`), each from its own settings
  and bytes: the process restarts once, not once per model. A version whose
  bytes changed on disk fails to reload alone (its pool reports it stale);
  the others serve.
* **A load that overruns its budget** (--load-timeout-seconds) can only be
  stopped by killing the process it runs in (it may hold the GIL in one C
  call). Here that process hosts other versions too: it is killed, the new
  version fails alone with the overrun message, and before that failure is
  reported the process is started again with the versions it hosted,
  reloaded and warmed. Their batches in flight on that process fail with
  UNAVAILABLE (clients retry); their other processes serve meanwhile. The
  alternative, rebuilding every new version first in a throwaway child
  under the budget, would double every load's time and memory to guard
  against a rare artifact; the kill is what --runner process always did.
* **A process exists while it hosts something.** It starts with the first
  version placed on it and stops when the last one leaves (unload, retire),
  so an unloaded repository holds no worker process; the next load starts it
  again.

Placement: a version with N instances per device takes the N processes of
that device hosting the fewest versions (N is capped by the processes the
device has: one per GPU; instances_per_device > 1 on CUDA is served by the
one process, whose prepare and compute threads already overlap decode and
compute with --pipeline-depth).

Everything that changes which process runs, or what is loaded in it, holds
the `SharedWorker`'s lock; the batch path (`WorkerProcess.run`) does not.

**Attached workers (--frontends N).** With several front ends, the
supervisor (`frontends`) starts the worker processes, each listening on a
Unix socket in the server's runtime directory (`worker_socket`), restarts
one that dies, and every front end attaches to every worker: a
`SharedWorker` with a `socket` connects instead of starting a process
(waiting for the supervisor's restart when the process is gone), learns the
pid from the worker's `hello`, and closes only its own connection when it
has nothing left to host. A worker loads an artifact once however many
front ends load it, and merges their pending batches of one model into one
forward pass (`worker`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from .config import instance_plan
from .ipc import FRONT_END_PID, RUNTIME_DIR, Connection, WorkerGone

log = logging.getLogger("framewire.worker")

WORKER_COMMAND = [sys.executable, "-m", "framewire.service.worker"]
#: Seconds to wait for a worker to confirm an unload, or to exit on `stop`.
CONTROL_SECONDS = 30.0


class WorkerStartError(Exception):
    """A worker could not load the model; `kind` is "artifact", "changed"
    (the file is not the bytes the version was loaded from), "timeout" or
    "internal"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def worker_socket(runtime_dir: str | Path, device: str, index: int) -> Path:
    """Where the supervisor's worker `index` of `device` listens (--frontends N)."""
    return Path(runtime_dir) / f"worker-{re.sub(r'[^A-Za-z0-9]', '-', device)}-{index}.sock"


class AttachedProcess:
    """A worker process the supervisor started, as a front end sees it: the
    part of `subprocess.Popen` the front end uses (poll, wait, kill, pid).
    Its exit code belongs to its parent, the supervisor: `returncode` stays
    None once it has exited."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):  # already gone, or no pidfd (then `poll` asks the kernel by pid)
            self._fd = None
        self._exited = False

    def poll(self):
        """None while it runs (the code is unknown here once it has exited: -1)."""
        if not self._exited:
            if self._fd is not None:
                self._exited = bool(select.select([self._fd], [], [], 0)[0])
            else:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    self._exited = True
        return -1 if self._exited else None

    def wait(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            if self._fd is not None:
                select.select([self._fd], [], [], None if deadline is None else max(0.0, deadline - time.monotonic()))
            else:
                time.sleep(0.05)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._exited = True


def connect_unix(path: Path, timeout: float) -> socket.socket:
    """A connection to the worker listening at `path`, waiting up to `timeout`
    seconds for it to listen (the supervisor restarts a worker that died)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED) or time.monotonic() >= deadline:
                raise WorkerStartError("internal", f"no model worker listens at {path} ({exc.strerror or exc}); "
                                       "the supervisor starts it (--frontends)") from None
            time.sleep(0.05)


class SharedWorker:
    """One worker process on one device and the versions loaded in it (see the module doc).

    `generation` counts the processes started: a version is loaded in the
    process of one generation (`WorkerProcess.generation`), and is live only
    while that process runs."""

    def __init__(self, device: str, index: int, nice: int = 0, socket_path: Path | None = None):
        self.device = device
        self.index = index
        #: Where the supervisor's worker listens (--frontends N); None: this front end starts its own.
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        #: Niceness the process runs at (--worker-nice; 0: the front end's).
        self.nice = nice
        self.proc: subprocess.Popen | None = None
        self.connection: Connection | None = None
        self.generation = 0
        self.restarts = 0  # starts after a process died (not after one stopped for having nothing to host)
        self.lock = threading.RLock()
        #: The versions loaded here (WorkerProcess), in the order they came.
        self.hosted: list = []
        self.stopped = False
        self._exited = False  # the last process stopped because it hosted nothing

    @property
    def name(self) -> str:
        return f"{self.device}/{self.index}"

    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None and self.connection is not None and self.connection.alive

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def ensure_running(self) -> None:
        """Start the process unless it runs (lock held)."""
        if self.stopped:
            raise WorkerStartError("internal", "the server is stopping")
        if self.alive():
            return
        if self.socket_path is not None:
            self._attach()
            return
        died = self.proc is not None and not self._exited
        self._stop_process()
        if died:
            self.restarts += 1
            log.warning("worker %s (was pid %d) is not running; starting it again for %d version(s)", self.name,
                        self.proc.pid, len(self.hosted))
        self._exited = False
        # The arguments only label the process (ps, top): what it hosts comes in messages.
        self.proc = subprocess.Popen([*WORKER_COMMAND, self.device, f"worker-{self.index}"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True,
                                     env={**os.environ, FRONT_END_PID: str(os.getpid())})
        self.connection = Connection(self.proc.stdout, self.proc.stdin, name=f"worker-{self.name}")
        if self.nice:  # before it loads anything: the threads it starts inherit the priority
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, self.nice)
        self.generation += 1

    def _attach(self) -> None:
        """Connect to the supervisor's worker (lock held), waiting while it restarts."""
        before = self.proc.pid if self.proc is not None else None
        died = before is not None and not self._exited
        self._stop_process()
        self._sock = connect_unix(self.socket_path, CONTROL_SECONDS)
        self.connection = Connection(self._sock.makefile("rb"), self._sock.makefile("wb"), name=f"worker-{self.name}")
        try:
            hello, _ = self.connection.request({"op": "hello"}).result(CONTROL_SECONDS)
        except (WorkerGone, FutureTimeout) as exc:
            self._stop_process()
            raise WorkerStartError("internal", f"the model worker at {self.socket_path} did not answer: {exc}") from None
        self.proc = AttachedProcess(int(hello["pid"]))
        self._exited = False
        if died and self.proc.pid != before:
            self.restarts += 1
            log.warning("worker %s (was pid %d) was restarted (now pid %d); reloading %d version(s)", self.name,
                        before, self.proc.pid, len(self.hosted))
        self.generation += 1

    def host(self, version) -> None:
        """Note `version` (a WorkerProcess just loaded here) as hosted (lock held)."""
        if version not in self.hosted:
            self.hosted.append(version)

    def bring_up(self, caller) -> None:
        """Have `caller` (a WorkerProcess of this worker) loaded and warm in a
        running process: start the process again if it died, and reload and
        warm every version it hosted, each once, under a budget of its own;
        raise `caller`'s failure (WorkerStartError) if its own reload failed.
        Several versions' pools ask after one crash: the first restarts the
        process and reloads them all; the others find theirs loaded."""
        with self.lock:
            tried: dict = {}
            while True:
                self.ensure_running()
                # A version whose runner is closing is not reloaded: it is about to leave.
                pending = [v for v in self.hosted
                           if v.generation != self.generation and v not in tried and not v.leaving]
                if caller not in self.hosted:
                    raise WorkerStartError("internal", "the version was unloaded")
                if not pending:
                    break
                version = pending[0]
                try:
                    version.reload_here()
                    tried[version] = None
                except WorkerStartError as exc:
                    tried[version] = exc
                    log.error("worker %s: %s could not be reloaded: %s", self.name, version.settings.model_id,
                              exc.message)
            if caller.generation != self.generation:
                failure = tried.get(caller)
                raise failure if failure is not None else WorkerStartError(
                    "internal", f"worker {self.name} exited while reloading the versions it hosts")

    def revive(self) -> None:
        """After a load killed the process: start it again for the versions it
        hosts, if any (lock held; failures are left to their pools)."""
        if self.stopped or self.alive() or not self.hosted:
            return
        try:
            self.bring_up(self.hosted[0])
        except WorkerStartError as exc:
            log.error("worker %s could not be started again: %s", self.name, exc.message)

    def unload(self, version) -> None:
        """`version` is no longer hosted here; unloaded if the process it was loaded in runs (lock held)."""
        if version in self.hosted:
            self.hosted.remove(version)
        if self.alive() and version.generation == self.generation:
            try:
                self.connection.request({"op": "unload", "model": version.settings.model_id}).result(
                    CONTROL_SECONDS)
            except (WorkerGone, FutureTimeout):
                pass
        version.generation = None

    def leave(self, version) -> None:
        """`version` leaves: unload it here; the process stops when nothing is left."""
        with self.lock:
            self.unload(version)
            if not self.hosted:
                self._stop_gracefully()
                self._exited = True

    def stop(self) -> None:
        """Stop the process for good (the server is stopping)."""
        with self.lock:
            self.stopped = True
            self._stop_gracefully()

    def _stop_gracefully(self) -> None:
        if self.socket_path is not None:  # the worker serves other front ends: only this connection closes
            self._stop_process()
            return
        if self.alive():
            try:
                self.connection.send({"op": "stop"})
                self.proc.stdin.close()
                self.proc.wait(CONTROL_SECONDS)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self._stop_process()

    def _stop_process(self) -> None:
        if self.socket_path is not None:
            if self._sock is not None:
                try:  # the reader thread sees the end and fails what is pending
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                if self.connection is not None:
                    self.connection.join(CONTROL_SECONDS)
                    self.connection.close()
                self._sock.close()
                self._sock = None
            if isinstance(self.proc, AttachedProcess):
                self.proc.close()
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass


class DeviceWorkers:
    """The server's worker processes, per device (see the module doc)."""

    def __init__(self, devices: tuple[str, ...], per_device: int, threads: int, nice: int = 0,
                 runtime_dir: str | None = None):
        self.per_device = per_device
        #: Intra-op threads of every worker (process-wide in a worker: the CPU instance plan's).
        self.threads = threads
        #: The supervisor's runtime directory when the workers are its (--frontends N), else None.
        self.runtime_dir = runtime_dir
        self.workers = {device: [SharedWorker(device, i, nice, worker_socket(runtime_dir, device, i)
                                              if runtime_dir else None) for i in range(per_device)]
                        for device in devices}
        self._lock = threading.Lock()

    @classmethod
    def for_plan(cls, plan, config, runtime_dir: str | None = None) -> "DeviceWorkers":
        """One process per GPU; on the CPU the instance plan's count and threads.
        In a front end the supervisor started, the supervisor's (RUNTIME_DIR)."""
        instances, threads = instance_plan(config, plan.on_cuda)
        runtime_dir = runtime_dir or os.environ.get(RUNTIME_DIR) or None
        return cls(plan.devices, 1 if plan.on_cuda else instances, threads, config.worker_nice, runtime_dir)

    @property
    def attached(self) -> bool:
        """Whether the workers are the supervisor's, shared with other front ends."""
        return self.runtime_dir is not None

    def place(self, device: str, count: int) -> list[SharedWorker]:
        """The `count` workers of `device` (at most all of them) hosting the fewest versions."""
        with self._lock:
            workers = self.workers[device]
            chosen = sorted(workers, key=lambda w: (len(w.hosted), w.index))[:max(1, min(count, len(workers)))]
            return sorted(chosen, key=lambda w: w.index)

    def all(self) -> list[SharedWorker]:
        return [w for workers in self.workers.values() for w in workers]

    def pids(self) -> set[int]:
        """Process ids of the running workers."""
        return {w.pid for w in self.all() if w.alive()}

    def close(self) -> None:
        """Stop every worker (after the versions have been unloaded)."""
        for worker in self.all():
            worker.stop()
