"""The model worker process: model versions hosted next to one device.

    python -m framewire.service.worker [LABEL ...]

Arguments only label the process for `ps` and `top` (the front end passes
the model id and artifact path). Everything the worker does arrives as
messages on stdin, answered on stdout (see `ipc`; each request's `id`
comes back in its reply):

| request                          | reply                                                       |
| -------------------------------- | ----------------------------------------------------------- |
| `load` {settings}                | `loaded` {model, task, dtype, device}, or `failed` {kind, message} |
| `warm` {model, sizes}            | `warmed`, or `failed`                                       |
| `buffer` {model, slot, path, size} | `buffer_ok`: shared memory for one slot of one model      |
| `run` {model, slot, batch}       | `done` {rows, errors, output, preprocess_us, compute_us} + output bytes, or `error` {kind, message} |
| `unload` {model}                 | `unloaded`                                                  |
| `stop`                           | (exits)                                                     |

`settings` is a `WorkerSettings` message; models are keyed by its
`model_id`, and a worker hosts every model version the front end places on
its device (see `device_workers`). Shared memory is keyed by (model id,
slot): each version has its own slots. A `run`'s batch is a
`payloads.pack` header: offsets into the slot's shared memory, where the
front end wrote compact payloads (encoded bytes, client pixels). Batches
go through two threads: one decodes and preprocesses (`DeviceModel.prepare`),
the other runs the network and replies, so on CUDA a batch is decoded
while the previous one computes. Images that fail to decode are reported
per row; the rest of the batch is answered; a model whose forward raises
fails its own batch, and the worker goes on serving every model. `load`
and `warm` run on a control thread of their own, so loading one version
does not hold up the batches of the others.

Running the network in its own process keeps the front end's event loop
from holding the GIL the network's Python dispatch needs, and keeps a
crashing model from taking the server down. The worker ignores SIGINT and
SIGTERM: the front end decides when it stops (a `stop` message, or its
pipe closing when the front end exits).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import sys
import threading
import time

from .ipc import FRONT_END_PID, WorkerGone, map_buffer, read_message, write_message

log = logging.getLogger("framewire.worker")


class WorkerHost:
    """The worker's models, shared memory and batch pipeline; see the module doc."""

    def __init__(self, inp, out):
        self.inp = inp
        self.out = out
        self.models: dict = {}
        self.buffers: dict[tuple, object] = {}  # (model id, slot) -> mapping
        self.decode_pool = None
        self._write_lock = threading.Lock()
        self._configured = False
        self._to_prepare: queue.Queue = queue.Queue()
        self._to_compute: queue.Queue = queue.Queue()
        self._to_control: queue.Queue = queue.Queue()
        for target, name in ((self._prepare_loop, "prepare"), (self._compute_loop, "compute"),
                             (self._control_loop, "control")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def reply(self, header: dict, payload: bytes = b"") -> None:
        with self._write_lock:
            write_message(self.out, header, payload)

    def serve(self) -> int:
        """Answer messages until `stop` or the pipe closes."""
        handlers = {"load": self._to_control.put, "warm": self._to_control.put, "buffer": self._buffer,
                    "run": self._run, "unload": self._unload}
        while True:
            try:
                header, _ = read_message(self.inp)
            except WorkerGone:
                return 0
            op = header.get("op")
            if op == "stop":
                return 0
            handler = handlers.get(op)
            if handler is None:
                self.reply({"op": "error", "id": header.get("id"), "kind": "internal",
                            "message": f"unexpected message {op!r}"})
                continue
            handler(header)

    # ------------------------------------------------------------ control

    def _control_loop(self) -> None:
        """Loads and warm-ups, one at a time, beside other models' batches."""
        handlers = {"load": self._load, "warm": self._warm}
        while True:
            header = self._to_control.get()
            handlers[header["op"]](header)

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

    def _load(self, header: dict) -> None:
        from framewire.exporter import ArtifactError
        from framewire.exporter.loader import read_artifact_bytes

        from .worker_settings import SettingsError, WorkerSettings

        request_id = header.get("id")
        try:
            settings = WorkerSettings.from_json(header.get("settings"))
            # The bytes are read and compared before torch is imported: a file
            # that changed is refused in milliseconds.
            data = read_artifact_bytes(settings.artifact, max_bytes=settings.max_artifact_bytes)
            found = hashlib.sha256(data).hexdigest()
            if settings.expect_sha256 and found != settings.expect_sha256:
                self.reply({"op": "failed", "id": request_id, "kind": "changed",
                            "message": changed_message(settings.expect_sha256, found)})
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
            self.reply({"op": "failed", "id": request_id, "kind": "artifact", "message": exc.reason})
            return
        except SettingsError as exc:
            self.reply({"op": "failed", "id": request_id, "kind": "internal", "message": str(exc)})
            return
        except Exception as exc:  # report why; the front end marks the model UNAVAILABLE
            log.exception("loading %s failed", header.get("settings", {}).get("artifact"))
            self.reply({"op": "failed", "id": request_id, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
            return
        self.models[settings.model_id] = model
        self.reply({"op": "loaded", "id": request_id, "model": settings.model_id, "task": handler.name,
                    "dtype": settings.dtype, "device": model.device_label})

    def _warm(self, header: dict) -> None:
        model = self.models.get(header.get("model"))
        try:
            if model is None:
                raise KeyError(f"model {header.get('model')!r} is not loaded here")
            seconds = model.warm_up([int(s) for s in header.get("sizes", [])])
        except Exception as exc:
            log.exception("warming up %s failed", header.get("model"))
            self.reply({"op": "failed", "id": header.get("id"), "kind": "internal",
                        "message": f"warm-up failed: {type(exc).__name__}: {exc}"})
            return
        self.reply({"op": "warmed", "id": header.get("id"), "seconds": {str(k): v for k, v in seconds.items()}})

    def _buffer(self, header: dict) -> None:
        self.buffers[(header.get("model"), int(header["slot"]))] = map_buffer(header["path"], int(header["size"]))
        self.reply({"op": "buffer_ok", "id": header.get("id")})

    def _unload(self, header: dict) -> None:
        model = header.get("model")
        self.models.pop(model, None)
        for key in [k for k in self.buffers if k[0] == model]:  # a batch still holding a view keeps the mapping
            del self.buffers[key]
        self.reply({"op": "unloaded", "id": header.get("id")})

    # ------------------------------------------------------------ batches

    def _run(self, header: dict) -> None:
        from .payloads import unpack

        model = self.models.get(header.get("model"))
        buffer = self.buffers.get((header.get("model"), header.get("slot")))
        if model is None or buffer is None:
            what = "model" if model is None else "shared memory slot"
            self.reply({"op": "error", "id": header.get("id"), "kind": "internal",
                        "message": f"no {what} for this batch ({header.get('model')!r}, slot {header.get('slot')})"})
            return
        self._to_prepare.put((header["id"], model, unpack(header["batch"], buffer)))

    def _prepare_loop(self) -> None:
        while True:
            request_id, model, batch = self._to_prepare.get()
            try:
                prepared = model.prepare(batch)
            except Exception as exc:
                self._fail(request_id, exc)
                continue
            finally:
                del batch
            self._to_compute.put((request_id, model, prepared))

    def _compute_loop(self) -> None:
        while True:
            request_id, model, prepared = self._to_compute.get()
            try:
                outcome = model.forward(prepared)
                del prepared
                output, payload = model.handler.encode_output(outcome.output) if outcome.rows else ({}, b"")
            except Exception as exc:
                self._fail(request_id, exc)
                continue
            self.reply({
                "op": "done", "id": request_id, "rows": outcome.rows, "output": output,
                "errors": {str(r): [e.code, e.message] for r, e in outcome.errors.items()},
                "preprocess_us": int(outcome.preprocess_seconds * 1e6),
                "compute_us": int(outcome.compute_seconds * 1e6),
            }, payload)

    def _fail(self, request_id, exc: Exception) -> None:
        from .errors import LimitExceededError

        if isinstance(exc, LimitExceededError):
            self.reply({"op": "error", "id": request_id, "kind": "limit", "message": exc.message})
            return
        log.exception("batch failed", exc_info=exc)  # the batch fails; the worker goes on
        self.reply({"op": "error", "id": request_id, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})


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
    # stdout carries the protocol; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # The front end's pid as it said it (it may be gone before this line runs).
    parent = int(os.environ.get(FRONT_END_PID) or os.getppid())
    threading.Thread(target=watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    return WorkerHost(sys.stdin.buffer, out).serve()


#: How often a worker checks that the front end that started it still runs.
PARENT_CHECK_SECONDS = 1.0


def watch_parent(parent: int, interval: float = PARENT_CHECK_SECONDS) -> None:
    """Exit once the front end that started this worker is gone (the worker
    was re-parented). Its closed pipe normally ends the worker, but not when
    another process still holds the pipe's other end, or a load that never
    returns keeps the worker busy: a worker must never outlive its server."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            log.warning("the front end (pid %d) is gone; this worker exits", parent)
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
