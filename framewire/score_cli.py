"""`framewire score`: score a folder of images on one or more servers into a
results file (framewire/score.py does the work). docs/clients.md is its guide.
`framewire stream` is framewire/stream_cli.py."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from framewire.connection import add_security_arguments, connection_options
from framewire.v1.options import DEFAULT_TOP_K

USAGE_ERROR = 2


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_score(sub)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (score's and stream's counts)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; at least 1")
    return value


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a folder (glob, list) of images on one or more servers into JSONL or CSV",
        description=(
            "Score every image of SOURCE with a model, spreading batches over the servers (round robin; "
            "a failed batch is retried on another server), and append one row per image to --out. "
            "Rerunning with the same --out skips the images already in it, so an interrupted run "
            "resumes where it stopped and no image is scored twice. Exits 0 when every image was "
            "scored or reported with its error."
        ),
    )
    p.add_argument("source", metavar="SOURCE",
                   help="a folder (searched recursively for .jpg .jpeg .png .webp .bmp), a glob pattern "
                        "(quote it; ** crosses folders) or a text file of image paths, one per line")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--server", default="localhost:8500", metavar="HOST:PORT[,HOST:PORT...]",
                   help="the servers to spread the work over (default %(default)s)")
    add_security_arguments(p)
    p.add_argument("--out", required=True, help="results file; appended to, and read first to resume")
    p.add_argument("--format", choices=("jsonl", "csv"),
                   help="output format (default: csv for a .csv --out, else jsonl)")
    p.add_argument("--version", type=int, default=0, help="model version (default: newest READY)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per request (default %(default)s)")
    p.add_argument("--concurrency", type=positive_int, default=4,
                   help="requests in flight at once (default %(default)s)")
    p.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K, help="classes per image (default %(default)s)")
    p.add_argument("--score-threshold", type=float, help="detection models: drop detections below this")
    p.add_argument("--max-detections", type=int, default=0, help="detection models: at most this many per image")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    p.add_argument("--max-attempts", type=positive_int, default=5,
                   help="attempts per batch on UNAVAILABLE before its images are reported failed "
                        "(default %(default)s; DEADLINE_EXCEEDED is retried once)")
    p.add_argument("--wait-ready", type=float, default=30.0,
                   help="seconds to wait at the start for a server to have the model ready (default %(default)s)")
    p.add_argument("--limit", type=int, help="score at most this many new images in this run")
    p.add_argument("--retry-failed", action="store_true",
                   help="score again the images whose rows in --out hold an error (their rows are replaced)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--json-summary", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    from framewire.results_file import ResultsFileError
    from framewire.score import ScoreError, score_images
    from framewire.sources import SourceError, discover_images

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    log_to_stderr("framewire.score", through_tqdm=progress)
    try:
        paths = discover_images(args.source)
        summary = score_images(
            paths, model=args.model, servers=args.server, out=args.out, fmt=args.format, version=args.version,
            batch_size=args.batch_size, concurrency=args.concurrency, top_k=args.top_k,
            score_threshold=args.score_threshold, max_detections=args.max_detections, timeout=args.timeout,
            max_attempts=args.max_attempts, wait_ready=args.wait_ready, limit=args.limit,
            retry_failed=args.retry_failed, progress=progress, **connection_options(args),
        )
    except (SourceError, ResultsFileError, ValueError) as exc:
        print(f"framewire score: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except ScoreError as exc:
        print(f"framewire score: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the output cannot be written
        print(f"framewire score: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.json_summary:
        print(json.dumps({
            "total": summary.total, "skipped": summary.skipped, "scored": summary.scored,
            "failed": summary.failed, "remaining": summary.remaining, "errors": dict(summary.errors),
            "servers": dict(summary.servers), "retries": summary.retries,
            "elapsed_s": round(summary.elapsed_s, 3), "images_per_second": round(summary.images_per_second, 2),
            "interrupted": summary.interrupted,
        }))
    else:
        print(summary.render())
    return 130 if summary.interrupted else 0


def log_to_stderr(name: str, *, through_tqdm: bool) -> None:
    """Warnings of `name` on stderr (above a progress bar when there is one)."""
    logger = logging.getLogger(name)
    if logger.handlers:
        return

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = f"{name.replace('.', ' ')}: {record.getMessage()}"
            if through_tqdm:
                from tqdm import tqdm

                tqdm.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr, flush=True)

    logger.addHandler(Handler(logging.WARNING))
    logger.propagate = False
