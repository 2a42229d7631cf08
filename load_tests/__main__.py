"""framewire's load toolkit: `python -m load_tests {sweep,rate,camera,budget-compare} ...`.

    # concurrency sweep of single-image Predict calls, with the in-process baseline
    python -m load_tests sweep --model mobilenet_v3_small --device cpu --input uint8:224 \
        --concurrency 1,2,4,8,16 --out sweep.json --plot sweep.png

    # BatchPredict of 32 images, the Open Inference Protocol, or streams
    python -m load_tests sweep --mode batch --batch 32 ...    --mode oip ...    --mode stream ...

    # a request rate (open loop, Poisson arrivals, 2 s deadlines), goodput within 100 ms
    python -m load_tests rate --rate 200,400 --budget-ms 100 --model resnet50 --device cuda --input jpeg:500x375

    # the same rates (fractions of the measured capacity) against static queue
    # delays and against a latency budget, in one table
    python -m load_tests budget-compare --rates 0.5,0.8,1.5x --delays-us 0,1000,2000,4000,8000 \
        --latency-budget-ms 100

    # camera mode: S streams at F frames per second with a latency budget
    python -m load_tests camera --streams 100 --fps 30 --budget-ms 50 --model resnet50 --device cuda

    # decode and preprocessing alone, in-process, frames per second by batch size
    python -m load_tests decode --input jpeg:1920x1080 --device cuda --batch-sizes 32,64,128

The model is a torchvision architecture exported with random weights (speed
does not depend on the weights), or --artifact FILE; the server is started
here (or give --server HOST:PORT, and --server-pid PID for its CPU figures).
Every report carries the ratio of served images/s to the same model run
in-process at its best batch size, measured in the same run, and for images
the server decodes also the ratio to an in-process run doing the same decode
+ preprocess + model work; and the server's own CPU per image, front end and
workers apart (from /proc), and the payload bytes per image it shipped to
its workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import baseline, compare, report
from .inputs import describe, make_images
from .serverproc import BenchServer, measured_point


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m load_tests", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="workload", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="mobilenet_v3_small",
                        help="torchvision architecture to export and serve, or noop (a model that costs nothing: "
                        "framewire's own cost per request)")
    common.add_argument("--artifact", help="serve this artifact instead of exporting --model")
    common.add_argument("--server", help="load a server already running at HOST:PORT (and --model names its model)")
    common.add_argument("--token", help="bearer token for a server with --tokens-file")
    common.add_argument("--device", default="cpu")
    common.add_argument("--dtype", default="auto", help="auto: float16 on CUDA, float32 on the CPU")
    common.add_argument("--input", default="uint8:224", help="jpeg:WxH, folder:PATH, uint8:S or float32:S")
    common.add_argument("--duration", type=float, default=15.0, help="seconds measured per point")
    common.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    common.add_argument("--processes", type=int, default=0, help="load worker processes (0: a fair share of CPUs)")
    common.add_argument("--max-batch-size", type=int, default=32)
    common.add_argument("--max-queue-delay-us", type=int, default=2000)
    common.add_argument("--server-arg", action="append", default=[], help="extra `framewire serve` flag (repeatable)")
    common.add_argument("--server-pid", type=int, help="pid of the --server, for its CPU per image")
    common.add_argument("--jpeg-draft", action="store_true", help="reduced-size JPEG decoding, in server and baseline")
    common.add_argument("--baseline-batches", default="1,2,4,8,16,32,64")
    common.add_argument("--baseline-seconds", type=float, default=3.0, help="time per baseline batch size")
    common.add_argument("--no-baseline", action="store_true", help="skip the in-process baseline")
    common.add_argument("--out", help="write the report as JSON here")
    common.add_argument("--plot", help="write throughput and p99 latency plots here (PNG; needs matplotlib)")

    p = sub.add_parser("sweep", parents=[common], help="closed-loop clients, a point per concurrency")
    p.add_argument("--mode", choices=["predict", "batch", "stream", "oip"], default="predict")
    p.add_argument("--batch", type=int, default=1, help="images per request (batch and oip modes)")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated client counts")

    open_loop = argparse.ArgumentParser(add_help=False)
    open_loop.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson",
                           help="gaps between requests: exponential (a Poisson process) or equal")
    open_loop.add_argument("--deadline-ms", type=float, default=2000.0,
                           help="each request's deadline (DEADLINE_EXCEEDED past it counts as a timeout)")

    p = sub.add_parser("rate", parents=[common, open_loop], help="requests at a given rate (open loop)")
    p.add_argument("--mode", choices=["predict", "batch", "oip"], default="predict")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rate", default="50", help="comma-separated requests per second")
    p.add_argument("--budget-ms", type=float, help="answers within this many ms count as goodput")

    p = sub.add_parser("camera", parents=[common], help="S streams at F frames per second")
    p.add_argument("--streams", default="8", help="comma-separated stream counts")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--budget-ms", type=int, default=100, help="latency budget; later frames are late (and skipped)")

    p = sub.add_parser("budget-compare", parents=[common, open_loop],
                       help="the same open-loop rates against static queue delays and a latency budget")
    p.add_argument("--latency-budget-ms", type=float, required=True,
                   help="the budget: passed to the budgeted server, and what counts as goodput for every setting")
    p.add_argument("--rates", default="0.5,0.8,1.5x", help="arrival rates as fractions of the measured capacity")
    p.add_argument("--delays-us", default="0,1000,2000,4000,8000",
                   help="the static settings: comma-separated --max-queue-delay-us values")
    p.add_argument("--capacity", type=float, help="requests per second taken as capacity (skips measuring it)")
    p.add_argument("--capacity-clients", type=int, default=16,
                   help="closed-loop clients that measure capacity (with --max-queue-delay-us)")
    p.add_argument("--static-only", action="store_true",
                   help="leave out the budgeted server (for a server without --latency-budget-ms)")
    p = sub.add_parser("decode", parents=[common], help="decode and preprocessing alone, in-process (no server)")
    p.add_argument("--batch-sizes", default="16,32,64")
    args = parser.parse_args(argv)
    if args.workload == "budget-compare" and args.server:
        parser.error("budget-compare starts its own servers (one per setting): drop --server")
    return args


def points(args) -> list[dict]:
    if args.workload == "sweep":
        return [{"workload": "closed", "mode": args.mode, "batch": args.batch, "clients": int(c)}
                for c in args.concurrency.split(",")]
    if args.workload == "rate":
        return [{"workload": "rate", "mode": args.mode, "batch": args.batch, "rate": float(r),
                 "arrivals": args.arrivals, "deadline_ms": args.deadline_ms, "budget_ms": args.budget_ms}
                for r in args.rate.split(",")]
    return [{"workload": "camera", "mode": "stream", "streams": int(s), "fps": args.fps, "budget_ms": args.budget_ms}
            for s in args.streams.split(",")]


def prepare_repo(args, repo: Path) -> tuple[str, Path | None]:
    """(model name, artifact path) in a fresh repository."""
    if args.artifact:
        from framewire.exporter import read_artifact

        artifact = read_artifact(args.artifact)
        target = repo / artifact.name / "1" / "model.fwa"
        target.parent.mkdir(parents=True)
        shutil.copy(args.artifact, target)
        return artifact.name, target
    if args.model == "noop":
        from .noop_model import NAME, export_noop

        return NAME, export_noop(repo)
    from framewire.exporter.torchvision_export import export_torchvision

    result = export_torchvision(f"torchvision/{args.model}", name=args.model, version=1, repo=repo, random_init=True)
    return args.model, result.path


def decodes(spec: str) -> bool:
    """Whether the server decodes or resizes this input (not float32 tensors)."""
    return not spec.startswith("float32")


def decode_only(args, dtype: str) -> int:
    """`decode`: frames per second of the server's decode and preprocessing in-process."""
    repo = Path(tempfile.mkdtemp(prefix="fw-decode-"))
    try:
        _, artifact = prepare_repo(args, repo)
        points = baseline.measure_pipeline(str(artifact), make_images(args.input, count=16), device=args.device,
                                           dtype=dtype, jpeg_draft=args.jpeg_draft, decode_only=True,
                                           batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                                           min_seconds=args.duration)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    summary = {"command": "python -m load_tests " + " ".join(argv_of(args)), "date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": machine(), "device": args.device, "dtype": dtype, "input": describe(args.input),
               "jpeg_draft": args.jpeg_draft, "decode": [p.__dict__ for p in points]}
    print(report.decode_table(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


def header(args, model: str, dtype: str, processes: int) -> dict:
    """What every report starts with: the command, when, where and what was loaded."""
    return {
        "command": "python -m load_tests " + " ".join(argv_of(args)),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "model": model, "device": args.device, "dtype": dtype, "input": describe(args.input),
        "jpeg_draft": args.jpeg_draft, "load_processes": processes,
    }


def main_compare(args, dtype: str, processes: int) -> int:
    """`budget-compare`: its own servers, one table (see load_tests/compare.py)."""
    repo = Path(tempfile.mkdtemp(prefix="fw-compare-"))
    try:
        model, _ = prepare_repo(args, repo)
        summary = {**header(args, model, dtype, processes), **compare.run(args, repo, model, dtype, processes)}
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    print()
    print(compare.table(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


def argv_of(args) -> list[str]:
    return list(getattr(args, "argv", None) or sys.argv[1:])


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = argv
    dtype = args.dtype if args.dtype != "auto" else ("float16" if args.device.startswith("cuda") else "float32")
    if args.workload == "decode":
        return decode_only(args, dtype)
    processes = args.processes or max(1, min(8, (os.cpu_count() or 2) // 4))
    if args.workload == "budget-compare":
        return main_compare(args, dtype, processes)
    repo = Path(tempfile.mkdtemp(prefix="fw-load-"))
    server = None
    try:
        if args.server:
            model, artifact = args.model, Path(args.artifact) if args.artifact else None
        else:
            model, artifact = prepare_repo(args, repo)
        best = same_work = None
        curve, work_curve = [], []
        batch_sizes = [int(b) for b in args.baseline_batches.split(",")]
        if not args.no_baseline and artifact is not None:
            curve = baseline.measure(str(artifact), device=args.device, dtype=dtype, batch_sizes=batch_sizes,
                                     min_seconds=args.baseline_seconds)
            best = max(curve, key=lambda p: p.images_per_second)
            print(f"baseline: {best.images_per_second:.1f} img/s at batch {best.batch_size} "
                  f"({args.device}, {dtype})", flush=True)
            if decodes(args.input):
                work_curve = baseline.measure_pipeline(str(artifact), make_images(args.input, count=8),
                                                       device=args.device, dtype=dtype, jpeg_draft=args.jpeg_draft,
                                                       batch_sizes=batch_sizes, min_seconds=args.baseline_seconds)
                same_work = max(work_curve, key=lambda p: p.images_per_second)
                print(f"baseline with the same decode + preprocess work: {same_work.images_per_second:.1f} img/s "
                      f"at batch {same_work.batch_size}", flush=True)
        if not args.server:
            server = BenchServer(repo, ["--device", args.device, "--dtype", dtype,
                                        "--max-batch-size", str(args.max_batch_size),
                                        "--max-queue-delay-us", str(args.max_queue_delay_us),
                                        *(["--jpeg-draft"] if args.jpeg_draft else []), *args.server_arg],
                                 repo / "server.log")
        address = args.server or server.address
        pid = server.pid if server is not None else args.server_pid
        results = []
        for point in points(args):
            spec = {**point, "server": address, "model": model, "input": args.input, "duration": args.duration,
                    "warmup": args.warmup, "token": args.token}
            results.append({"point": point, **measured_point(address, model, spec, processes, args.token, pid)})
            print(report.line(results[-1]), flush=True)
        baseline_rate = None
        if best is not None:
            # Timed again after the load: the better of the two is the model's
            # speed here (a timing disturbed by another process only lowers
            # it), which keeps the ratio conservative.
            again = baseline.measure(str(artifact), device=args.device, dtype=dtype, batch_sizes=[best.batch_size],
                                     min_seconds=args.baseline_seconds)[0]
            baseline_rate = max(best.images_per_second, again.images_per_second)
            for r in results:
                r["ratio"] = r["images_per_second"] / baseline_rate
        work_rate = None
        if same_work is not None:
            again = baseline.measure_pipeline(str(artifact), make_images(args.input, count=8), device=args.device,
                                              dtype=dtype, jpeg_draft=args.jpeg_draft,
                                              batch_sizes=[same_work.batch_size], min_seconds=args.baseline_seconds)[0]
            work_rate = max(same_work.images_per_second, again.images_per_second)
            for r in results:
                r["ratio_same_work"] = r["images_per_second"] / work_rate
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(repo, ignore_errors=True)

    summary = {
        **header(args, model, dtype, processes),
        "baseline": [p.__dict__ for p in curve],
        "baseline_images_per_second": baseline_rate,
        "baseline_same_work": [p.__dict__ for p in work_curve],
        "baseline_same_work_images_per_second": work_rate,
        "results": results,
    }
    print()
    print(report.table(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    if args.plot:
        print(report.plot(summary, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
