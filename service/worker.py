"""The model worker process: model versions hosted next to one device.

    python -m framewire.service.worker [LABEL ...]

Arguments only label the process for `ps` and `top` (the front end passes
the model id and artifact path). Everything the worker does arrives as
messages on a connection (see `ipc`), each answered on the connection it
came on, with the request's `id` in its reply:

* **Pipe mode** (the default): one connection, the worker's stdin and
  stdout, from the front end that started it. `stop`, or the pipe closing,
  ends the worker.
* **Listen mode** (`FRAMEWIRE_WORKER_SOCKET`, `ipc.WORKER_SOCKET`, set to a
  path): the worker listens on a Unix stream socket there (a stale file is
  removed first) and serves every connection it accepts, one per front end
  of `--frontends N`, each on a reader thread of its own; stdin is not
  read. `stop`, or the connection closing, ends that connection only; the
  worker goes on serving the others. Replies meant for a closed connection
  are dropped (`worker_peers`).

In both modes the worker exits once the process that started it (the pid
in FRAMEWIRE_FRONT_END_PID: the front end, or the supervisor) is gone.

| request                          | reply                                                       |
| -------------------------------- | ----------------------------------------------------------- |
| `hello`                          | `hello_ok` {pid}                                            |
| `load` {settings}                | `loaded` {model, task, dtype, device, shared}, or `failed` {kind, message} |
| `warm` {model, sizes}            | `warmed` {seconds: {size: seconds}}, or `failed` {kind, message} |
| `buffer` {model, slot, path, size} | `buffer_ok`: shared memory for one slot of one model, or `error` |
| `run` {model, slot, batch, max_rows?} | `done` {rows, errors, output, preprocess_us, compute_us, device_rows, merged} + output bytes, or `error` {kind, message} |
| `unload` {model}                 | `unloaded`                                                  |
| `stop`                           | (closes the connection; in pipe mode the worker exits)      |

**Models.** `settings` is a `WorkerSettings` message; a connection names
its models by `settings.model_id`, which each front end picks on its own.
That id is the connection's alias for a model the worker loads once per
*fingerprint*: the settings without `model_id` and the logging fields
(artifact path, sha256 of its bytes, device, dtype, ...). A `load` whose
fingerprint is loaded already, by any connection, answers at once with
`shared: true` and loads nothing. A `warm` at sizes the model was warmed at
answers the seconds measured then and runs nothing (with `cuda_graphs` the
graphs are captured at the first warm-up only); other sizes are warmed.
`unload`, or the connection closing, drops the connection's alias; the
model is freed once no alias of any connection refers to it. A worker
hosts every model version placed on its device (see `device_workers`).

**Batches.** Shared memory is a connection's own, keyed by (model id,
slot). A `run`'s batch is a `payloads.pack` header: offsets into the
slot's shared memory, where the front end wrote compact payloads (encoded
bytes, client pixels). Batches go through two threads: one decodes and
preprocesses (`DeviceModel.prepare`), the other runs the network and
replies, so on CUDA a batch is decoded while the previous one computes. A
`run` that carries `max_rows` (its version's maximum batch size) may be
merged with other prepared batches of the same model waiting then, from any
connection, that carry it too, up to the smallest `max_rows` among them
(`ready_batches`): one forward pass (`DeviceModel.forward_many`), each
batch answered on its own connection with its own rows, errors and output.
`device_rows` is the rows of the forward pass that ran the batch and
`merged` the batches in it (its own rows and 1 when not merged; 0 and 0
when every row failed to decode and nothing ran); `compute_us` is that
whole forward pass's time. Only batches whose inputs have one shape merge.
A `run` without `max_rows` runs alone. Images that fail to decode are
reported per row; the rest of the batch is answered; a forward pass that
raises fails every batch in it, and the worker goes on serving every model.
`load` and `warm` run on a control thread of their own, one at a time, so
loading one version does not hold up the batches of the others, and two
connections loading one artifact load it once.

Running the network in its own process keeps the front end's event loop
from holding the GIL the network's Python dispatch needs, and keeps a
crashing model from taking the server down. The worker ignores SIGINT and
SIGTERM: the process that started it decides when it stops.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import heap
from .ipc import FRONT_END_PID, WORKER_SOCKET, WorkerGone, map_buffer, read_message
from .ready_batches import ReadyBatches, merge_wait
from .worker_peers import Peer, listening_socket

log = logging.getLogger("framewire.worker")

#: Settings that do not change what a loaded model computes (left out of its fingerprint).
UNSHARED_SETTINGS = ("model_id", "log_level", "log_format")


def fingerprint(settings_json: dict, sha256: str) -> str:
    """The key a loaded model is shared under: its settings but the ones in
    UNSHARED_SETTINGS, with the sha256 of the bytes it was loaded from."""
    kept = {k: v for k, v in settings_json.items() if k not in UNSHARED_SETTINGS}
    return json.dumps({**kept, "expect_sha256": sha256}, sort_keys=True, separators=(",", ":"))


@dataclass(eq=False)
class HostedModel:
    """A model loaded once in this worker, and how many aliases refer to it."""

    key: str
    model: Any  # a DeviceModel
    info: dict  # task, dtype and device, for `loaded` replies
    warmed: dict[int, float] = field(default_factory=dict)  # batch size -> seconds its warm-up took
    aliases: int = 0
    #: Seconds its recent forward passes took (a moving average): how long a pass waits for more batches.
    forward_seconds: float = 0.0


@dataclass(eq=False)
class Job:
    """One `run` on its way through the worker."""

    peer: Peer
    request_id: Any
    hosted: HostedModel
    batch: Any  # the BatchInput, until prepared
    max_rows: int  # 0: never merged
    prepared: Any = None
    rows: int = 0
    #: What ReadyBatches merges by: the model, and the shape of one input
    #: row when inputs are stacked (a batch of another shape never merges).
    merge_key: tuple = ()

    @property
    def group(self) -> HostedModel:
        return self.hosted


class WorkerHost:
    """The worker's models, connections and batch pipeline; see the module doc."""

    def __init__(self):
        self.hosted: dict[str, HostedModel] = {}  # fingerprint -> model
        self.decode_pool = None
        self._lock = threading.Lock()  # `hosted`, and every peer's models and buffers
        self._configured = False
        self._to_prepare: queue.Queue = queue.Queue()
        self._ready = ReadyBatches()
        self._to_control: queue.Queue = queue.Queue()
        for target, name in ((self._prepare_loop, "prepare"), (self._compute_loop, "compute"),
                             (self._control_loop, "control")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def listen(self, path: str) -> None:
        """Listen mode: serve every connection made to a Unix socket at `path` (never returns)."""
        server = listening_socket(path)
        log.info("worker %d listening on %s", os.getpid(), path)
        for number in itertools.count(1):
            try:
                sock, _ = server.accept()
            except OSError as exc:  # out of descriptors, say: the connections open go on
                log.warning("accepting a connection on %s failed: %s", path, exc)
                time.sleep(0.1)
                continue
            peer = Peer.over_socket(sock, f"connection-{number}")
            threading.Thread(target=self.serve, args=(peer,), name=peer.name, daemon=True).start()

    def serve(self, peer: Peer) -> None:
        """Answer one connection's messages until `stop` or it closes; then
        drop its aliases and shared memory."""
        handlers = {"load": self._control, "warm": self._control, "buffer": self._buffer, "run": self._run,
                    "unload": self._unload, "hello": self._hello}
        try:
            while True:
                try:
                    header, _ = read_message(peer.inp)
                except (WorkerGone, OSError, ValueError):
                    return
                op = header.get("op")
                if op == "stop":
                    return
                handler = handlers.get(op)
                if handler is None:
                    peer.reply({"op": "error", "id": header.get("id"), "kind": "internal",
                                "message": f"unexpected message {op!r}"})
                    continue
                handler(peer, header)
        finally:
            self._drop(peer)

    def _drop(self, peer: Peer) -> None:
        peer.close()
        with self._lock:
            for model_id in list(peer.models):
                self._release(peer, model_id)
            peer.buffers.clear()  # a batch still holding a view keeps its mapping

    def _hello(self, peer: Peer, header: dict) -> None:
        peer.reply({"op": "hello_ok", "id": header.get("id"), "pid": os.getpid()})

    # ------------------------------------------------------------ models

    def _attach(self, peer: Peer, model_id: str, hosted: HostedModel) -> None:
        """Make `model_id` the peer's alias of `hosted` (lock held)."""
        hosted.aliases += 1
        if model_id in peer.models:
            self._release(peer, model_id)
        peer.models[model_id] = hosted

    def _release(self, peer: Peer, model_id: str) -> None:
        """Drop the peer's alias `model_id` and its shared memory; the model
        goes with its last alias (lock held)."""
        hosted = peer.models.pop(model_id, None)
        for key in [k for k in peer.buffers if k[0] == model_id]:
            del peer.buffers[key]
        if hosted is None:
            return
        hosted.aliases -= 1
        if hosted.aliases <= 0 and self.hosted.get(hosted.key) is hosted:
            del self.hosted[hosted.key]
            log.info("%s unloaded: no connection uses it", hosted.model.name)
            del hosted
            heap.settle()  # its reference cycles were frozen with it

    def _shared(self, peer: Peer, model_id: str, key: str) -> HostedModel | None:
        """The model loaded under `key` already, now aliased as `model_id` by `peer`."""
        with self._lock:
            hosted = self.hosted.get(key)
            if hosted is not None and peer.open:
                self._attach(peer, model_id, hosted)
            return hosted

    def _loaded(self, peer: Peer, request_id, model_id: str, hosted: HostedModel, shared: bool) -> None:
        peer.reply({"op": "loaded", "id": request_id, "model": model_id, **hosted.info, "shared": shared})

    # ------------------------------------------------------------ control

    def _control(self, peer: Peer, header: dict) -> None:
        self._to_control.put((peer, header))

    def _control_loop(self) -> None:
        """Loads and warm-ups, one at a time, beside other models' batches."""
        handlers = {"load": self._load, "warm": self._warm}
        while True:
            peer, header = self._to_control.get()
            if peer.open:  # a connection that closed meanwhile wants nothing more
                handlers[header["op"]](peer, header)

    def _configure(self, settings) -> None:
        """Process-wide settings, from the first model loaded."""
        if self._configured:
            return
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from .logs import configure_logging

        configure_logging(settings.log_level, settings.log_format)
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        threads = settings.decode_threads or (min(8, os.cpu_count() or 1) if settings.on_cuda
                                              else max(1, settings.cpu_threads or torch.get_num_threads()))
        self.decode_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self._configured = True

    def _load(self, peer: Peer, header: dict) -> None:
        from framewire.exporter import ArtifactError
        from framewire.exporter.loader import read_artifact_bytes

        from .worker_settings import SettingsError, WorkerSettings

        request_id = header.get("id")
        try:
            settings = WorkerSettings.from_json(header.get("settings"))
            settings_json = settings.to_json()
            if settings.expect_sha256:
                hosted = self._shared(peer, settings.model_id, fingerprint(settings_json, settings.expect_sha256))
                if hosted is not None:
                    self._loaded(peer, request_id, settings.model_id, hosted, shared=True)
                    return
            # The bytes are read and compared before torch is imported: a file
            # that changed is refused in milliseconds.
            data = read_artifact_bytes(settings.artifact, max_bytes=settings.max_artifact_bytes)
            found = hashlib.sha256(data).hexdigest()
            if settings.expect_sha256 and found != settings.expect_sha256:
                peer.reply({"op": "failed", "id": request_id, "kind": "changed",
                            "message": changed_message(settings.expect_sha256, found)})
                return
            key = fingerprint(settings_json, found)
            hosted = self._shared(peer, settings.model_id, key)
            if hosted is not None:
                self._loaded(peer, request_id, settings.model_id, hosted, shared=True)
                return
            from .device_model import DeviceModel, load_network, trust_policy
            from .tasks import task_handler

            self._configure(settings)
            log.info("loading %s from %s", settings.model_id, settings.artifact)
            loaded = load_network(settings, trust=trust_policy(settings), data=data)
            del data
            handler = task_handler(loaded.artifact)
            model = DeviceModel(loaded.module, handler, settings, self.decode_pool, name=settings.model_id)
        except ArtifactError as exc:
            peer.reply({"op": "failed", "id": request_id, "kind": "artifact", "message": exc.reason})
            return
        except SettingsError as exc:
            peer.reply({"op": "failed", "id": request_id, "kind": "internal", "message": str(exc)})
            return
        except Exception as exc:  # report why; the front end marks the model UNAVAILABLE
            log.exception("loading %s failed", (header.get("settings") or {}).get("artifact"))
            peer.reply({"op": "failed", "id": request_id, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
            return
        hosted = HostedModel(key, model, {"task": handler.name, "dtype": settings.dtype, "device": model.device_label})
        with self._lock:
            if not peer.open:
                return  # nobody wants it any more
            self.hosted[key] = hosted
            self._attach(peer, settings.model_id, hosted)
        heap.keep()
        self._loaded(peer, request_id, settings.model_id, hosted, shared=False)

    def _warm(self, peer: Peer, header: dict) -> None:
        with self._lock:
            hosted = peer.models.get(header.get("model"))
        try:
            if hosted is None:
                raise KeyError(f"model {header.get('model')!r} is not loaded here")
            sizes = list(dict.fromkeys(int(s) for s in header.get("sizes", [])))
            new = [s for s in sizes if s not in hosted.warmed]
            if new:
                hosted.warmed.update(hosted.model.warm_up(new))
                heap.keep()
        except Exception as exc:
            log.exception("warming up %s failed", header.get("model"))
            peer.reply({"op": "failed", "id": header.get("id"), "kind": "internal",
                        "message": f"warm-up failed: {type(exc).__name__}: {exc}"})
            return
        peer.reply({"op": "warmed", "id": header.get("id"), "seconds": {str(s): hosted.warmed[s] for s in sizes}})

    def _buffer(self, peer: Peer, header: dict) -> None:
        try:
            mapping = map_buffer(header["path"], int(header["size"]))
        except (OSError, ValueError, KeyError) as exc:
            peer.reply({"op": "error", "id": header.get("id"), "kind": "internal",
                        "message": f"cannot map shared memory {header.get('path')!r}: {exc}"})
            return
        with self._lock:
            peer.buffers[(header.get("model"), int(header["slot"]))] = mapping
        peer.reply({"op": "buffer_ok", "id": header.get("id")})

    def _unload(self, peer: Peer, header: dict) -> None:
        with self._lock:
            self._release(peer, header.get("model"))
        peer.reply({"op": "unloaded", "id": header.get("id")})

    # ------------------------------------------------------------ batches

    def _run(self, peer: Peer, header: dict) -> None:
        from .payloads import unpack

        model_id = header.get("model")
        with self._lock:
            hosted = peer.models.get(model_id)
            buffer = peer.buffers.get((model_id, header.get("slot")))
        if hosted is None or buffer is None:
            what = "model" if hosted is None else "shared memory slot"
            peer.reply({"op": "error", "id": header.get("id"), "kind": "internal",
                        "message": f"no {what} for this batch ({model_id!r}, slot {header.get('slot')})"})
            return
        max_rows = header.get("max_rows") or 0
        job = Job(peer, header["id"], hosted, unpack(header["batch"], buffer),
                  max_rows if isinstance(max_rows, int) and max_rows > 0 else 0)
        if job.max_rows:
            self._ready.expect(job.group)
        self._to_prepare.put(job)

    def _prepare_loop(self) -> None:
        while True:
            job = self._to_prepare.get()
            if not job.peer.open:  # nobody to answer
                if job.max_rows:
                    self._ready.settle(job.group)
                continue
            try:
                job.prepared = job.hosted.model.prepare(job.batch)
            except Exception as exc:
                if job.max_rows:
                    self._ready.settle(job.group)
                self._fail([job], exc)
                continue
            finally:
                job.batch = None
            job.rows = len(job.prepared.rows)
            inputs = job.prepared.inputs
            job.merge_key = (job.hosted, tuple(inputs.shape[1:]) if hasattr(inputs, "shape") else None)
            self._ready.put(job)

    def _compute_loop(self) -> None:
        while True:
            jobs = self._ready.take(wait=merge_wait)
            started = time.perf_counter()
            try:
                outcomes = jobs[0].hosted.model.forward_many([job.prepared for job in jobs])
            except Exception as exc:
                self._fail(jobs, exc)
                continue
            finally:
                for job in jobs:
                    job.prepared = None
            hosted = jobs[0].hosted
            took = time.perf_counter() - started
            hosted.forward_seconds = took if not hosted.forward_seconds else 0.8 * hosted.forward_seconds + 0.2 * took
            for job, outcome in zip(jobs, outcomes):
                try:
                    output, payload = job.hosted.model.handler.encode_output(outcome.output) if outcome.rows \
                        else ({}, b"")
                except Exception as exc:
                    self._fail([job], exc)
                    continue
                job.peer.reply({
                    "op": "done", "id": job.request_id, "rows": outcome.rows, "output": output,
                    "errors": {str(r): [e.code, e.message] for r, e in outcome.errors.items()},
                    "preprocess_us": int(outcome.preprocess_seconds * 1e6),
                    "compute_us": int(outcome.compute_seconds * 1e6),
                    "device_rows": outcome.device_rows, "merged": outcome.merged,
                }, payload)

    def _fail(self, jobs: list[Job], exc: Exception) -> None:
        """Every batch of `jobs` fails with `exc`; the worker goes on."""
        from .errors import LimitExceededError

        if isinstance(exc, LimitExceededError):
            kind, message = "limit", exc.message
        else:
            log.exception("batch failed", exc_info=exc)
            kind, message = "internal", f"{type(exc).__name__}: {exc}"
        for job in jobs:
            job.peer.reply({"op": "error", "id": job.request_id, "kind": kind, "message": message})


def changed_message(expected: str, found: str) -> str:
    """Why a worker refuses a file whose bytes are not the version's."""
    return (
        f"its file changed on disk after the version was loaded (sha256 {expected[:16]}... then, "
        f"{found[:16]}... now); a restarted worker serves only the bytes its version was loaded from: "
        "reload the model (RepositoryModelLoad, or the next --poll-seconds rescan)"
    )


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # stdout may carry the protocol; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # The starting process's pid as it said it (it may be gone before this line runs).
    parent = int(os.environ.get(FRONT_END_PID) or os.getppid())
    threading.Thread(target=watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    host = WorkerHost()
    path = os.environ.get(WORKER_SOCKET)
    if path:
        host.listen(path)
    host.serve(Peer(sys.stdin.buffer, out, "pipe"))
    return 0


#: How often a worker checks that the process that started it still runs.
PARENT_CHECK_SECONDS = 1.0


def watch_parent(parent: int, interval: float = PARENT_CHECK_SECONDS) -> None:
    """Exit once the process that started this worker (the front end, or in
    listen mode the supervisor) is gone: the worker was re-parented. In pipe
    mode its closed pipe normally ends the worker, but not when another
    process still holds the pipe's other end, or a load that never returns
    keeps the worker busy; in listen mode nothing else ends it. A worker must
    never outlive its server."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            log.warning("the process that started this worker (pid %d) is gone; it exits", parent)
            exit_now(0)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of torch (about a second per
    worker, paid on every unload and shutdown). Replies are already flushed,
    the front end owns the shared buffers, and the OS reclaims the rest."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
