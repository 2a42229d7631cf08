"""Memory of a server hosting several models: PSS of the front end and its workers.

    python -m load_tests.memory --models mobilenet_v3_small,resnet18,squeezenet1_1,shufflenet_v2_x0_5

Exports each torchvision architecture with random weights (nothing is
downloaded) into a fresh repository, starts `framewire serve --device cpu`
on it with the CLI's defaults (two worker instances on two cores), sends
each model a few single-image requests so every worker has run a batch,
then reads, from /proc, the PSS and RSS of the server process and of every
process under it. PSS splits shared pages between the processes sharing
them, so the sum is what the server holds. It prints one JSON object
(processes, per-process figures, totals) and writes it to --out.

To measure another revision's server with the same tool, lay that revision
out as an importable package and put it first on PYTHONPATH (the server and
its workers inherit it), as BENCHMARKS.md shows for main.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .serverproc import BenchServer, _children

DEFAULT_MODELS = "mobilenet_v3_small,resnet18,squeezenet1_1,shufflenet_v2_x0_5"


def figures(pid: int) -> dict:
    """PSS and RSS bytes of one process (None where unreadable)."""
    found = {"pid": pid, "pss_bytes": None, "rss_bytes": None, "command": ""}
    try:
        found["command"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss", "Rss"):
                found[f"{name.lower()}_bytes"] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return found


def tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += _children(current)
    return found


def measure(models: list[str], server_args: list[str], requests: int) -> dict:
    from framewire.client import Client
    from framewire.exporter.torchvision_export import export_torchvision

    repo = Path(tempfile.mkdtemp(prefix="fw-memory-"))
    server = None
    try:
        for name in models:
            export_torchvision(f"torchvision/{name}", name=name, version=1, repo=repo, random_init=True)
        started = time.monotonic()
        server = BenchServer(repo, ["--device", "cpu", *server_args], repo / "server.log")
        start_seconds = time.monotonic() - started
        image = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
        with Client(server.address, timeout=120) as client:
            for _ in range(requests):
                for name in models:
                    client.predict(image, model=name)
        time.sleep(1.0)  # let freed memory settle
        processes = [figures(pid) for pid in tree(server.pid)]
        return {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "models": models, "server_args": server_args, "start_seconds": round(start_seconds, 1),
            "process_count": len(processes),
            "worker_processes": sum("framewire.service.worker" in p["command"] for p in processes),
            "total_pss_bytes": sum(p["pss_bytes"] or 0 for p in processes),
            "total_rss_bytes": sum(p["rss_bytes"] or 0 for p in processes),
            "processes": processes,
        }
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(repo, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="torchvision architectures (comma-separated)")
    parser.add_argument("--requests", type=int, default=3, help="single-image requests per model before reading")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `framewire serve` flag (repeatable)")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    result = measure(args.models.split(","), args.server_arg, args.requests)
    gib = 1024 ** 3
    for p in result["processes"]:
        print(f"pid {p['pid']:>7}  PSS {(p['pss_bytes'] or 0) / gib:5.2f} GiB  RSS {(p['rss_bytes'] or 0) / gib:5.2f} GiB"
              f"  {p['command'][:70]}")
    print(f"{result['process_count']} processes ({result['worker_processes']} workers): PSS "
          f"{result['total_pss_bytes'] / gib:.2f} GiB, RSS {result['total_rss_bytes'] / gib:.2f} GiB "
          f"(started in {result['start_seconds']} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
