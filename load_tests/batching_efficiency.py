"""Dynamic batching efficiency: N concurrent single-image Predict clients
against `framewire serve`, as a ratio of the same model run in-process at its
best batch size, measured side by side in one run on one machine.

    python -m load_tests.batching_efficiency --model mobilenet_v3_small \
        --device cpu --clients 16 --input float32:224 --out report.json

The model is a torchvision architecture exported with random weights
(weights do not change the speed). The baseline runs first, alone; then the
server starts and the load runs in separate worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import baseline, loadgen


def export(model: str, repo: Path) -> Path:
    from framewire.exporter.torchvision_export import export_torchvision

    return export_torchvision(f"torchvision/{model}", name=model, version=1, repo=repo, random_init=True).path


def start_server(repo: Path, args) -> tuple[subprocess.Popen, str, Path]:
    log_path = repo / "server.log"
    log = open(log_path, "w")
    command = [
        shutil.which("framewire") or "framewire", "serve", "--repo", str(repo), "--host", "127.0.0.1",
        "--port", "0", "--device", args.device, "--dtype", args.dtype,
        "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", str(args.max_queue_delay_us),
        *args.server_arg,
    ]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = log_path.read_text()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        if port and "serving: " in text:
            return proc, f"127.0.0.1:{port.group(1)}", log_path
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{text}")
        time.sleep(0.2)
    raise TimeoutError(f"server did not start:\n{log_path.read_text()}")


def server_counts(address: str, model: str) -> tuple[int, int]:
    from framewire.client import Client

    with Client(address) as client:
        status = client.server_status()
    entry = next(m for m in status.models if m.model == model)
    return entry.inference_count, entry.execution_count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small", help="torchvision model name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1, help="load-generator processes")
    parser.add_argument("--input", default="float32:224", help="uint8:S, float32:S or jpeg:WxH")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--baseline-batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `framewire serve` flag (repeatable)")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)

    repo = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    try:
        artifact = export(args.model, repo)
        sizes = [int(s) for s in args.baseline_batches.split(",")]
        points = baseline.measure(str(artifact), device=args.device if args.device != "auto" else "cpu",
                                  dtype=args.dtype, batch_sizes=sizes)
        best = max(points, key=lambda p: p.images_per_second)
        proc, address, log_path = start_server(repo, args)
        try:
            before = server_counts(address, args.model)
            load = loadgen.spawn(address, args.model, clients=args.clients, processes=args.processes,
                                 duration=args.duration, warmup=args.warmup, input_spec=args.input)
            after = server_counts(address, args.model)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        # The machine's speed drifts; time the best batch size again after the
        # load and compare against the mean of the two baseline runs.
        again = baseline.measure(str(artifact), device=args.device if args.device != "auto" else "cpu",
                                 dtype=args.dtype, batch_sizes=[best.batch_size])[0]
        baseline_rate = (best.images_per_second + again.images_per_second) / 2
        inferences, executions = after[0] - before[0], after[1] - before[1]
        report = {
            "command": "python -m load_tests.batching_efficiency " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}",
            "model": args.model, "device": args.device, "dtype": args.dtype, "input": args.input,
            "clients": args.clients,
            "baseline": [p.__dict__ for p in points],
            "baseline_best": best.__dict__,
            "baseline_best_after_load": again.__dict__,
            "baseline_images_per_second": baseline_rate,
            "served_images_per_second": load.throughput,
            "ratio": load.throughput / baseline_rate,
            "latency_ms": {"p50": load.percentile(50), "p90": load.percentile(90), "p99": load.percentile(99)},
            "errors": load.errors,
            "server_average_batch_size": inferences / executions if executions else 0.0,
        }
    finally:
        shutil.rmtree(repo, ignore_errors=True)

    print(f"{'batch':>6} {'baseline img/s':>15}")
    for p in points:
        print(f"{p.batch_size:>6} {p.images_per_second:>15.1f}")
    print(f"\nbest baseline: {best.images_per_second:.1f} img/s at batch {best.batch_size} "
          f"({again.images_per_second:.1f} when timed again after the load; mean {baseline_rate:.1f})")
    print(f"served:        {load.throughput:.1f} img/s with {args.clients} clients ({args.input}), "
          f"average server batch {report['server_average_batch_size']:.1f}, "
          f"p50 {report['latency_ms']['p50']:.1f} ms, p99 {report['latency_ms']['p99']:.1f} ms, errors {load.errors}")
    print(f"dynamic batching efficiency: {report['ratio']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
