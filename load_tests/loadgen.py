"""Load generation in worker processes, separate from the server.

Workloads:

- `closed`: N clients, each sending its next request when its last one is
  answered (`predict`, `batch` of N images, `stream` one camera per client
  sending its next frame on each answer, or `oip` ModelInfer);
- `rate`: requests started at a given rate whatever the answers (open loop),
  with Poisson arrivals (or evenly spaced ones), each with a deadline; with a
  latency budget, the answers within it count as goodput, and refusals
  (UNAVAILABLE) are timed;
- `camera`: S streams each sending frames at F fps on a clock, with a latency
  budget; the server skips frames older than the budget.

One worker is `python -m load_tests.loadgen '<json spec>'`; it prints one
JSON line of results. `spawn` runs several and adds their results up.
Requests are serialized once, so the generator spends its CPU on gRPC, not on
building messages.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import subprocess
import sys
from dataclasses import dataclass, field

NATIVE = "/framewire.v1.ModelInference/"
OIP = "/inference.GRPCInferenceService/"

#: Seconds a closed-loop or camera request may take before the client gives up.
PATIENT_TIMEOUT = 120.0


#: What `_one` returns for an UNAVAILABLE the latency budget sent after admitting the request.
DROPPED = "UNAVAILABLE (dropped)"
OVER_BUDGET_KEY = "framewire-over-budget"  # service/errors.py's key, which this client does not import


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank at or above), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def arrival_times(rate: float, start: float, stop: float, *, poisson: bool = True, seed: int = 0):
    """When an open-loop client sends, from `start` until `stop`: `rate` per
    second on average, as a Poisson process (exponential gaps) or evenly."""
    if rate <= 0:
        raise ValueError(f"the arrival rate must be positive, got {rate}")
    gaps = random.Random(seed)
    due, sent = start, 0
    while due < stop:
        yield due
        sent += 1
        due = due + gaps.expovariate(rate) if poisson else start + sent / rate


@dataclass
class LoadResult:
    """What the workers saw inside the measuring window."""

    seconds: float = 0.0
    requests: int = 0
    images: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    frames_due: int = 0
    frames_sent: int = 0
    frames_late: int = 0
    frames_skipped: int = 0
    budget_ms: float = 0.0
    within_budget: int = 0
    refusal_latencies_ms: list[float] = field(default_factory=list)
    dropped_latencies_ms: list[float] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def add(self, other: dict) -> None:
        for name in ("requests", "images", "frames_due", "frames_sent", "frames_late", "frames_skipped",
                     "within_budget"):
            setattr(self, name, getattr(self, name) + other.get(name, 0))
        self.latencies_ms.extend(other.get("latencies_ms", []))
        self.refusal_latencies_ms.extend(other.get("refusal_latencies_ms", []))
        self.dropped_latencies_ms.extend(other.get("dropped_latencies_ms", []))
        for code, n in other.get("errors", {}).items():
            self.errors[code] = self.errors.get(code, 0) + n

    def summary(self) -> dict:
        out = {
            "seconds": self.seconds, "requests": self.requests, "images": self.images,
            "requests_per_second": self.requests_per_second, "images_per_second": self.images_per_second,
            "latency_ms": {q: self.percentile(int(q[1:])) for q in ("p50", "p90", "p99")},
            "errors": self.errors,
            "refusals": {"count": len(self.refusal_latencies_ms), "p50_ms": percentile(self.refusal_latencies_ms, 50),
                         "p99_ms": percentile(self.refusal_latencies_ms, 99)},
            "dropped": {"count": len(self.dropped_latencies_ms), "p99_ms": percentile(self.dropped_latencies_ms, 99)},
            "timeouts": self.errors.get("DEADLINE_EXCEEDED", 0),
        }
        if self.budget_ms:
            out["budget_ms"] = self.budget_ms
            out["goodput_per_second"] = self.within_budget / self.seconds if self.seconds else 0.0
        if self.frames_due:
            out["camera"] = {"frames_due": self.frames_due, "frames_sent": self.frames_sent,
                             "frames_answered": self.requests, "frames_late": self.frames_late,
                             "frames_skipped": self.frames_skipped,
                             "frames_dropped": self.frames_due - self.requests}
        return out


def build_requests(spec: dict) -> tuple[str, list[bytes], int]:
    """(method, serialized requests, images per request) for a closed or rate workload."""
    from framewire.v1 import inference_pb2 as pb

    from .inputs import make_images

    images = make_images(spec["input"], count=8)
    mode, model, per = spec["mode"], spec["model"], int(spec.get("batch", 1))
    if mode == "predict":
        return NATIVE + "Predict", [pb.PredictRequest(model=model, image=i).SerializeToString() for i in images], 1
    if mode == "batch":
        requests = [pb.BatchPredictRequest(model=model, images=[images[(j + k) % len(images)] for k in range(per)])
                    .SerializeToString() for j in range(len(images))]
        return NATIVE + "BatchPredict", requests, per
    if mode == "oip":
        return OIP + "ModelInfer", [oip_request(model, images, j, per) for j in range(len(images))], per
    raise SystemExit(f"mode {mode!r} is not a unary mode")


def oip_request(model: str, images: list, start: int, count: int) -> bytes:
    """A ModelInfer request carrying `count` of `images` in the input their form calls for."""
    from framewire.oip import grpc_service_pb2 as opb

    chosen = [images[(start + k) % len(images)] for k in range(count)]
    request = opb.ModelInferRequest(model_name=model)
    first = chosen[0]
    if first.WhichOneof("data") == "encoded":
        request.inputs.add(name="encoded_images", datatype="BYTES", shape=[count])
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(i.encoded)) + i.encoded for i in chosen))
    elif first.tensor.dtype == 4:  # uint8 HWC
        request.inputs.add(name="images", datatype="UINT8", shape=[count, *first.tensor.shape])
        request.raw_input_contents.append(b"".join(i.tensor.data for i in chosen))
    else:
        request.inputs.add(name="preprocessed", datatype="FP32", shape=[count, *first.tensor.shape])
        request.raw_input_contents.append(b"".join(i.tensor.data for i in chosen))
    return request.SerializeToString()


async def run_worker(spec: dict) -> dict:
    from framewire.connection import Connection

    result = LoadResult(budget_ms=float(spec.get("budget_ms") or 0))
    # Its own connection, shared with no other channel of this process.
    connection = Connection(spec["server"], token=spec.get("token"), max_message_bytes=256 << 20,
                            channel_options=(("grpc.use_local_subchannel_pool", 1),))
    metadata = connection.call_metadata or None
    async with connection.aio_channel() as channel:
        loop = asyncio.get_running_loop()
        start = loop.time() + spec.get("warmup", 0.0)
        stop = start + spec["duration"]
        workload = spec["workload"]
        if workload == "camera" or spec["mode"] == "stream":
            await _streams(channel, spec, result, start, stop, metadata)
        else:
            method, requests, per = build_requests(spec)
            call = channel.unary_unary(method)
            if workload == "rate":
                await _open_loop(call, requests, per, spec, result, start, stop, metadata)
            else:
                await asyncio.gather(*(_closed_client(call, requests, per, i, result, start, stop, metadata)
                                       for i in range(int(spec["clients"]))))
    return dict(result.__dict__)


def _record(result: LoadResult, start: float, stop: float, sent: float, done: float, images: int, code) -> None:
    """Count one answer inside the measuring window: served (and within the
    budget, if there is one), or its error code; refusals (UNAVAILABLE) are
    timed too, since a refusal is only useful when it is quick, and apart
    from requests the latency budget admitted and dropped later (DROPPED)."""
    if not (start <= sent and done <= stop):
        return
    latency_ms = (done - sent) * 1000
    if code is None:
        result.requests += 1
        result.images += images
        result.latencies_ms.append(latency_ms)
        if result.budget_ms and latency_ms <= result.budget_ms:
            result.within_budget += 1
    else:
        dropped = code == DROPPED
        code = "UNAVAILABLE" if dropped else code
        result.errors[code] = result.errors.get(code, 0) + 1
        if dropped:
            result.dropped_latencies_ms.append(latency_ms)
        elif code == "UNAVAILABLE":
            result.refusal_latencies_ms.append(latency_ms)


def _trailer(exc, key: str):
    metadata = exc.trailing_metadata() or ()
    return metadata.get(key) if hasattr(metadata, "get") else dict(metadata).get(key)


async def _one(call, request: bytes, metadata, timeout: float = PATIENT_TIMEOUT):
    import grpc

    try:
        await call(request, timeout=timeout, metadata=metadata)
        return None
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE and _trailer(exc, OVER_BUDGET_KEY) == "dropped":
            return DROPPED
        return exc.code().name


async def _closed_client(call, requests, per, index, result, start, stop, metadata) -> None:
    loop = asyncio.get_running_loop()
    i = index
    while (sent := loop.time()) < stop:
        code = await _one(call, requests[i % len(requests)], metadata)
        _record(result, start, stop, sent, loop.time(), per, code)
        i += 1


async def _open_loop(call, requests, per, spec, result, start, stop, metadata) -> None:
    loop = asyncio.get_running_loop()
    timeout = float(spec["deadline_ms"]) / 1000 if spec.get("deadline_ms") else PATIENT_TIMEOUT
    schedule = arrival_times(float(spec["rate"]), loop.time(), stop,
                             poisson=spec.get("arrivals", "poisson") == "poisson", seed=int(spec.get("seed", 0)))
    tasks = set()

    async def fire(request, sent):
        code = await _one(call, request, metadata, timeout)
        _record(result, start, stop, sent, loop.time(), per, code)

    for i, due in enumerate(schedule):
        await asyncio.sleep(max(0.0, due - loop.time()))
        task = loop.create_task(fire(requests[i % len(requests)], loop.time()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def _streams(channel, spec, result, start, stop, metadata) -> None:
    from framewire.v1 import inference_pb2 as pb

    from .inputs import make_images

    images = make_images(spec["input"], count=8)
    camera = spec["workload"] == "camera"
    count = int(spec["streams"] if camera else spec["clients"])
    call = channel.stream_stream(NATIVE + "StreamPredict", request_serializer=pb.StreamFrame.SerializeToString,
                                 response_deserializer=pb.StreamResult.FromString)
    budget_ms = int(spec.get("budget_ms", 0)) if camera else 0
    interval = 1.0 / float(spec["fps"]) if camera else 0.0
    loop = asyncio.get_running_loop()

    async def one(index: int) -> None:
        sent: dict[int, float] = {}
        answered = asyncio.Semaphore(0)  # one release per answer: closed-loop streams wait for theirs
        stream_id = f"{spec.get('seed', 0)}-{index}"

        async def frames():
            number, due = 0, loop.time() + interval * index / max(count, 1)
            while True:
                if camera:
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    if start <= due < stop:
                        result.frames_due += 1
                if due >= stop or (not camera and loop.time() >= stop):
                    return
                now = loop.time()
                sent[number] = now
                if camera and start <= due:
                    result.frames_sent += 1
                yield pb.StreamFrame(stream_id=stream_id, frame_number=number, image=images[number % len(images)],
                                     model=spec["model"] if number == 0 else "", max_age_ms=budget_ms)
                number += 1
                if camera:
                    due += interval
                else:
                    await answered.acquire()
                    due = loop.time()

        async for answer in call(frames(), timeout=spec["duration"] + spec.get("warmup", 0) + 120,
                                 metadata=metadata):
            now = loop.time()
            t0 = sent.pop(answer.frame_number, now)
            answered.release()
            if not (start <= t0 and now <= stop + (budget_ms / 1000 if camera else 0)):
                continue
            if answer.skipped:
                result.frames_skipped += 1
            elif answer.status.code:
                name = str(answer.status.code)
                result.errors[name] = result.errors.get(name, 0) + 1
            else:
                result.requests += 1
                result.images += 1
                latency = (now - t0) * 1000
                result.latencies_ms.append(latency)
                if budget_ms and latency > budget_ms:
                    result.frames_late += 1

    await asyncio.gather(*(one(i) for i in range(count)))


def spawn(spec: dict, processes: int) -> LoadResult:
    """Run the workload split over `processes` worker processes; add up their results."""
    parts = []
    for p in range(processes):
        part = dict(spec, seed=p)
        for key in ("clients", "streams"):
            if key in spec:
                total = int(spec[key])
                part[key] = total // processes + (1 if p < total % processes else 0)
        if "rate" in spec:
            part["rate"] = float(spec["rate"]) / processes
        if all(part.get(key, 1) for key in ("clients", "streams", "rate")):
            parts.append(part)
    procs = [subprocess.Popen([sys.executable, "-m", "load_tests.loadgen", json.dumps(part)],
                              stdout=subprocess.PIPE, text=True) for part in parts]
    total = LoadResult(seconds=float(spec["duration"]), budget_ms=float(spec.get("budget_ms") or 0))
    for proc in procs:
        out, _ = proc.communicate(timeout=spec["duration"] + spec.get("warmup", 0) + 300)
        if proc.returncode != 0:
            raise RuntimeError(f"a load worker failed with exit code {proc.returncode}")
        total.add(json.loads(out.strip().splitlines()[-1]))
    return total


def main(argv=None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(asyncio.run(run_worker(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
