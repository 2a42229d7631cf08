"""The model worker process: one instance of one model version on one device.

    python -m framewire.service.worker --artifact PATH --device cpu ...

It loads the artifact with the framewire loader, warms up, says `ready`,
then runs batches the front-end places in shared memory, one at a time, and
answers on stdout (see `ipc`). Running the network in its own process keeps
the front-end's event loop (gRPC, decoding) from holding the GIL the
network's Python dispatch needs, and keeps a crashing model from taking the
server down. It ignores SIGINT and SIGTERM: the front-end decides when it
stops (a `stop` message, or its pipe closing when the front-end exits).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .ipc import WorkerGone, map_buffer, read_message, write_message

log = logging.getLogger("framewire.worker")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m framewire.service.worker")
    p.add_argument("--artifact", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-artifact-bytes", type=int, default=2**31 - 1)
    p.add_argument("--warmup-sizes", default="", help="comma-separated batch sizes")
    p.add_argument("--warmup-shape", default="", help="C,H,W")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="text")
    p.add_argument("--trusted-keys", default="")
    p.add_argument("--require-signed", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # stdout carries the protocol; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    args = parse_args(argv)
    from .logs import configure_logging

    configure_logging(args.log_level, args.log_format)

    import torch

    from framewire.exporter import ArtifactError, load_model

    from .runner import ModelRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from framewire.exporter.signing import TrustPolicy

        trust = TrustPolicy.from_directory(args.trusted_keys, args.require_signed) if args.trusted_keys else None
        loaded = load_model(args.artifact, max_bytes=args.max_artifact_bytes, trust=trust)
        runner = ModelRunner(loaded, devices=(args.device,), dtype=args.dtype, channels_last=args.channels_last,
                             cuda_graphs=args.cuda_graphs)
        if args.warmup_sizes:
            sizes = [int(s) for s in args.warmup_sizes.split(",")]
            shape = tuple(int(s) for s in args.warmup_shape.split(","))
            runner.warm_up(sizes, shape)
    except ArtifactError as exc:
        write_message(out, {"op": "failed", "kind": "artifact", "message": exc.reason})
        return 1
    except Exception as exc:  # report why, then exit: the front-end marks the model UNAVAILABLE
        log.exception("loading %s failed", args.artifact)
        write_message(out, {"op": "failed", "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    write_message(out, {"op": "ready", "task": runner.task, "dtype": runner.dtype_name, "device": runner.device_label})
    return serve_batches(runner, inp, out)


def serve_batches(runner, inp, out) -> int:
    import numpy as np
    import torch

    from .errors import LimitExceededError

    instance = runner.instances[0]
    buffer = None
    while True:
        try:
            header, _ = read_message(inp)
        except WorkerGone:
            return 0
        op = header.get("op")
        if op == "stop":
            return 0
        if op == "buffer":
            buffer = map_buffer(header["path"], header["size"])
            write_message(out, {"op": "buffer_ok"})
            continue
        if op != "run" or buffer is None:
            write_message(out, {"op": "error", "kind": "internal", "message": f"unexpected message {op!r}"})
            continue
        try:
            items = [
                torch.from_numpy(np.frombuffer(buffer, np.float32, int(np.prod(t["shape"])), t["offset"]).reshape(t["shape"]))
                for t in header["tensors"]
            ]
            staged = runner.stage(items, instance.device)
            del items
            output = runner.forward(instance, staged, finish=lambda o: o)
            header, payload = runner.handler.encode_output(output)
            reply = {"op": "done", **header}
        except LimitExceededError as exc:
            write_message(out, {"op": "error", "kind": "limit", "message": exc.message})
            continue
        except Exception as exc:  # the batch fails; the worker goes on
            log.exception("batch failed")
            write_message(out, {"op": "error", "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
            continue
        write_message(out, reply, payload)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of torch (about a second per
    worker, paid on every unload and shutdown). Replies are already flushed,
    the front end owns the shared buffer, and the OS reclaims the rest."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
