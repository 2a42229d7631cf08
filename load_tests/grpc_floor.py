"""gRPC Python's own cost per request: `python -m load_tests.grpc_floor [--seconds S] [--clients N]`.

A servicer whose Predict returns an empty answer at once, served by grpc.aio
(what framewire's front end runs on) and by the sync server with a thread
pool, each loaded by N client processes sending Predict requests that carry
a 3 kB image for S seconds. It prints requests/s and the server process's
CPU per request (utime + stime from /proc). That is the floor under
framewire's front end: what one request costs before any of framewire's
own work (interceptors, request building, batching, worker hand-off,
answers, metrics), to be read next to the front-end CPU per request that
`python -m load_tests sweep` reports for a real server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from concurrent import futures

import grpc

from framewire.connection import Connection
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc as pb_grpc

_EMPTY = pb.PredictResponse()


class _AioServicer(pb_grpc.ModelInferenceServicer):
    async def Predict(self, request, context):
        return _EMPTY


class _SyncServicer(pb_grpc.ModelInferenceServicer):
    def Predict(self, request, context):
        return _EMPTY


def _serve(kind: str, threads: int) -> None:
    """Serve until stdin closes; the port goes to stdout first."""
    def announce(port: int) -> None:
        print(port, flush=True)

    if kind == "aio":
        async def run() -> None:
            server = grpc.aio.server()
            pb_grpc.add_ModelInferenceServicer_to_server(_AioServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            announce(port)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            await server.stop(0)

        asyncio.run(run())
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    pb_grpc.add_ModelInferenceServicer_to_server(_SyncServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(port)
    sys.stdin.read()
    server.stop(0)


def _client(port: int, seconds: float, image_bytes: int = 3072, pause: float = 0.0) -> None:
    """Send Predicts one after another for `seconds` (`pause` seconds apart);
    print how many."""
    request = pb.PredictRequest(model="m", image=pb.Image(encoded=b"x" * image_bytes))
    sent = 0
    with Connection(f"127.0.0.1:{port}").channel() as channel:
        predict = pb_grpc.ModelInferenceStub(channel).Predict
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            predict(request, timeout=30)
            sent += 1
            if pause:
                time.sleep(pause)
    print(sent, flush=True)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _clients(port: int, seconds: float, count: int, image_bytes: int = 3072, pause: float = 0.0) -> int:
    command = [sys.executable, "-m", "load_tests.grpc_floor", "--role", "client", "--port", str(port),
               "--seconds", str(seconds), "--image-bytes", str(image_bytes), "--pause-ms", str(pause * 1000)]
    loaders = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return sum(int(p.communicate(timeout=seconds + 120)[0]) for p in loaders)


def measure(kind: str, *, seconds: float, clients: int, threads: int = 16, image_bytes: int = 3072,
            pause: float = 0.0) -> tuple[float, float]:
    """(requests/s, server CPU seconds per request) of one server kind, "aio" or "sync"."""
    server = subprocess.Popen([sys.executable, "-m", "load_tests.grpc_floor", "--role", "server", "--kind", kind,
                               "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        _clients(port, min(2.0, seconds), 1)  # warm up
        before = _cpu_seconds(server.pid)
        sent = _clients(port, seconds, clients, image_bytes, pause)
        cpu = _cpu_seconds(server.pid) - before
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return sent / seconds, cpu / max(sent, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.grpc_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per server (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--threads", type=int, default=16, help="the sync server's thread pool (default 16)")
    parser.add_argument("--image-bytes", type=int, default=3072,
                        help="bytes of the image each request carries (default 3072; a 1280x720 JPEG is 100-300 kB)")
    parser.add_argument("--pause-ms", type=float, default=0.0,
                        help="each client's pause between requests, to measure at lower rates (default 0)")
    parser.add_argument("--role", choices=("run", "server", "client"), default="run", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("aio", "sync"), default="aio", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "server":
        _serve(args.kind, args.threads)
        return 0
    if args.role == "client":
        _client(args.port, args.seconds, args.image_bytes, args.pause_ms / 1000)
        return 0
    for kind in ("aio", "sync"):
        rate, cpu = measure(kind, seconds=args.seconds, clients=args.clients, threads=args.threads,
                            image_bytes=args.image_bytes, pause=args.pause_ms / 1000)
        print(f"{kind:4s} server: {rate:7.0f} requests/s, server CPU {cpu * 1000:.3f} ms per request "
              f"({args.clients} clients, {args.image_bytes} B images, {args.seconds:g} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
