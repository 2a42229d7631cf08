"""Closed-loop load: N concurrent clients, each sending its next request when
its last one is answered, in worker processes separate from the server.

Run as a module, one worker process is:

    python -m load_tests.loadgen --server HOST:PORT --model NAME --clients 8 \
        --duration 20 --input uint8:224 [--warmup 3]

and prints one JSON line: completed requests, errors by code, and latency
percentiles over the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def make_image(spec: str, seed: int = 0):
    """A protobuf Image from 'uint8:S' (SxS RGB array), 'float32:S' (3xSxS
    preprocessed) or 'jpeg:WxH' (an encoded JPEG)."""
    import io

    import numpy as np

    from framewire.client import image_message

    kind, _, size = spec.partition(":")
    rng = np.random.default_rng(seed)
    if kind == "uint8":
        s = int(size)
        return image_message(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))
    if kind == "float32":
        s = int(size)
        return image_message(rng.standard_normal((3, s, s)).astype(np.float32))
    if kind == "jpeg":
        from PIL import Image

        w, h = (int(v) for v in size.split("x"))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        return image_message(buf.getvalue())
    raise ValueError(f"unknown input {spec!r}; use uint8:S, float32:S or jpeg:WxH")


async def run_clients(server: str, model: str, clients: int, duration: float, warmup: float, input_spec: str) -> LoadResult:
    import grpc

    from framewire.v1 import inference_pb2 as pb
    from framewire.v1 import inference_pb2_grpc

    request = pb.PredictRequest(model=model, image=make_image(input_spec))
    result = LoadResult()
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(server, options=options) as channel:
        stub = inference_pb2_grpc.ModelInferenceStub(channel)
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def client():
            while True:
                sent = loop.time()
                if sent >= stop_at:
                    return
                try:
                    await stub.Predict(request, timeout=60)
                    code = None
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                done = loop.time()
                if sent >= measure_from and done <= stop_at:
                    if code is None:
                        result.completed += 1
                        result.latencies_ms.append((done - sent) * 1000)
                    else:
                        result.errors[code] = result.errors.get(code, 0) + 1

        await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = duration
    return result


def spawn(server: str, model: str, *, clients: int, processes: int, duration: float, warmup: float,
          input_spec: str) -> LoadResult:
    """Run `clients` closed-loop clients spread over `processes` worker processes."""
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "load_tests.loadgen", "--server", server, "--model", model,
             "--clients", str(n), "--duration", str(duration), "--warmup", str(warmup), "--input", input_spec],
            stdout=subprocess.PIPE, text=True,
        )
        for n in per if n
    ]
    total = LoadResult(seconds=duration)
    for proc in procs:
        out, _ = proc.communicate(timeout=duration + warmup + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"load worker failed with {proc.returncode}")
        data = json.loads(out.strip().splitlines()[-1])
        total.completed += data["completed"]
        total.latencies_ms.extend(data["latencies_ms"])
        for code, n in data["errors"].items():
            total.errors[code] = total.errors.get(code, 0) + n
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--input", default="uint8:224")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = asyncio.run(run_clients(args.server, args.model, args.clients, args.duration, args.warmup, args.input))
    print(json.dumps({
        "completed": result.completed, "errors": result.errors, "latencies_ms": result.latencies_ms,
        "wall_seconds": time.perf_counter() - started,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
