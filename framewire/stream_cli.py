"""`framewire stream`: send a video, camera or folder of frames to a server
on one stream and report fps and latency (framewire/stream.py does the
work). docs/clients.md is its guide."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from framewire.connection import add_security_arguments, connection_from_args
from framewire.score_cli import USAGE_ERROR, log_to_stderr, positive_int
from framewire.v1.options import DEFAULT_TOP_K


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_stream(sub)


def _add_stream(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream",
        help="stream a video, camera or folder of frames to a server and report fps and latency",
        description=(
            "Send the frames of SOURCE to a server on one StreamPredict stream and print, every second, "
            "the frames captured, sent, answered and skipped per second and the latency p50/p90/p99. "
            "When the server falls behind, stale frames are skipped rather than queued (--drop, "
            "--max-in-flight, --max-age-ms); when the server restarts, the stream reconnects."
        ),
    )
    p.add_argument("source", metavar="SOURCE",
                   help="a video file, an rtsp:// or http:// URL, a camera index (0) or a folder of frames "
                        "(played in name order at --fps); all but a folder need the `camera` extra (OpenCV)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--server", default="localhost:8500", metavar="HOST:PORT", help="the server (default %(default)s)")
    add_security_arguments(p)
    p.add_argument("--version", type=int, default=0, help="model version (default: newest READY)")
    p.add_argument("--stream-id", default="camera-0", help="the stream's id at the server (default %(default)s)")
    p.add_argument("--fps", type=float,
                   help="frames per second to play a folder (default 30) or a video file (default: its own "
                        "rate) at; live sources set their own pace. 0: as fast as the server answers, every "
                        "frame sent and answered (--drop none; dropping frames read faster than any server "
                        "answers would drop nearly all of them)")
    p.add_argument("--max-in-flight", type=positive_int, default=2,
                   help="frames at the server at once (default %(default)s)")
    p.add_argument("--drop", choices=("oldest", "newest", "none"),
                   help="when a frame arrives while one already waits to be sent: drop the waiting one "
                        "(oldest: latest frame wins), the new one (newest), or none (wait; every frame is "
                        "answered, the source slows down) (default: oldest; none with --fps 0)")
    p.add_argument("--max-age-ms", type=int, default=0,
                   help="skip a frame still waiting this many milliseconds (0: never) (default %(default)s)")
    p.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K, help="classes per frame (default %(default)s)")
    p.add_argument("--score-threshold", type=float, help="detection models: drop detections below this")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--loop", action="store_true", help="play a folder of frames again and again")
    p.add_argument("--encode", choices=("jpeg", "raw"), default="jpeg",
                   help="how video frames travel: JPEG, or raw RGB pixels (default %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of video frames (default %(default)s)")
    p.add_argument("--out", help="write one JSON line per frame (status, latency, prediction)")
    p.add_argument("--annotate", metavar="VIDEO", help="write the frames with their answers drawn on (.mp4 or .avi)")
    p.add_argument("--drain-seconds", type=float, default=10.0,
                   help="at the end, how long to wait for the last answers (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no per-second lines, only the summary")
    p.set_defaults(handler=_stream)


def _stream(args: argparse.Namespace) -> int:
    from framewire.sources import SourceError

    log_to_stderr("framewire.stream", through_tqdm=False)
    try:
        return _run_stream(args)
    except SourceError as exc:
        print(f"framewire stream: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as exc:  # --out cannot be written
        print(f"framewire stream: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _run_stream(args: argparse.Namespace) -> int:
    from pathlib import Path

    from framewire.results_file import prediction_fields
    from framewire.sources import folder_frames, is_video_source, video_fps, video_frames
    from framewire.stream import CameraStream, StreamClosedError

    if args.fps is not None and args.fps < 0:
        print(f"framewire stream: --fps {args.fps:g} is negative; give a rate, or 0 for as fast as the server "
              "answers", file=sys.stderr)
        return USAGE_ERROR
    if args.fps == 0 and args.drop not in (None, "none"):
        print(f"framewire stream: --fps 0 sends frames as fast as the server answers them; --drop {args.drop} "
              "would drop nearly every frame read faster than that. Give a rate (e.g. --fps 30) to see how "
              "dropping keeps a slow server current, or leave --drop out", file=sys.stderr)
        return USAGE_ERROR
    drop = args.drop or ("none" if args.fps == 0 else "oldest")
    annotate = bool(args.annotate)
    if is_video_source(args.source):
        if not args.source.isdigit() and "://" not in args.source and not Path(args.source).is_file():
            print(f"framewire stream: {args.source}: no such file, folder, URL or camera index", file=sys.stderr)
            return USAGE_ERROR
        frames = video_frames(args.source, fps=args.fps, encode=args.encode, jpeg_quality=args.jpeg_quality,
                              keep_bgr=annotate)
        fps = args.fps if args.fps else video_fps(args.source)
    else:
        fps = 30.0 if args.fps is None else args.fps
        frames = folder_frames(args.source, fps=fps, decode=annotate, loop=args.loop)
    annotator = None
    if annotate:
        from framewire.annotate import VideoAnnotator

        annotator = VideoAnnotator(args.annotate, fps)
    out = open(args.out, "w", encoding="utf-8") if args.out else None

    def on_result(result) -> None:
        if out is not None:
            row = {"frame": result.frame_number, "stream_id": result.stream_id, "status": result.status,
                   "code": result.code.name, "message": result.message or None,
                   "latency_ms": None if result.latency_ms is None else round(result.latency_ms, 2)}
            if result.prediction is not None:
                row.update(model=result.prediction.model, version=result.prediction.version,
                           **prediction_fields(result.prediction))
            out.write(json.dumps(row) + "\n")
        if annotator is not None:
            annotator.write(result.tag, result)

    stream = CameraStream(connection_from_args(args), model=args.model, version=args.version,
                          stream_id=args.stream_id, top_k=args.top_k, score_threshold=args.score_threshold,
                          max_in_flight=args.max_in_flight, drop=drop, max_age_ms=args.max_age_ms,
                          on_result=on_result)
    stop = threading.Event()
    reporter = None
    if not args.quiet:
        reporter = threading.Thread(target=_report, args=(stream, stop), daemon=True)
    start = time.monotonic()
    status = 0
    try:
        stream.start()
        if reporter is not None:
            reporter.start()
        for count, frame in enumerate(frames):
            if args.frames is not None and count >= args.frames:
                break
            if args.duration is not None and time.monotonic() - start >= args.duration:
                break
            stream.submit(frame.image, tag=frame.bgr)
    except KeyboardInterrupt:
        status = 130
    except StreamClosedError as exc:
        print(f"framewire stream: {exc}", file=sys.stderr)
        status = 1
    finally:
        try:
            stream.close(args.drain_seconds, raise_error=False)
        finally:
            stop.set()
            if out is not None:
                out.close()
            if annotator is not None:
                annotator.close()
    elapsed = time.monotonic() - start
    summary = stream.stats.summary()
    print(_render_summary(summary, elapsed))
    if stream.error is not None and status == 0:
        print(f"framewire stream: {stream.error}", file=sys.stderr)
        status = 1
    elif summary["captured"] and not summary["answered"] and status == 0:
        print(f"framewire stream: no frame was answered by {args.server}", file=sys.stderr)
        status = 1
    return status


def _report(stream, stop: threading.Event) -> None:
    start = time.monotonic()
    stream.stats.take_window()
    while not stop.wait(1.0):
        w = stream.stats.take_window()
        latency = "  ".join(f"p{p} {_ms(w[f'p{p}_ms'])}" for p in (50, 90, 99))
        print(f"{time.monotonic() - start:6.0f}s  captured {w['captured_fps']:5.1f}/s  sent {w['sent_fps']:5.1f}/s  "
              f"answered {w['answered_fps']:5.1f}/s  skipped {w['skipped_fps'] + w['dropped_fps']:5.1f}/s  "
              f"failed {w['failed_fps']:4.1f}/s  latency {latency}", file=sys.stderr, flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _render_summary(s: dict, elapsed: float) -> str:
    per_second = (lambda n: n / elapsed) if elapsed > 0 else (lambda n: 0.0)
    return (
        f"frames: captured {s['captured']}, sent {s['sent']}, answered {s['answered']}, "
        f"skipped {s['skipped']} by the server and {s['dropped']} by the client, failed {s['failed']}, "
        f"reconnects {s['reconnects']}\n"
        f"{elapsed:.1f} s: captured {per_second(s['captured']):.1f} fps, answered {per_second(s['answered']):.1f} fps; "
        f"latency p50 {_ms(s['p50_ms'])}, p90 {_ms(s['p90_ms'])}, p99 {_ms(s['p99_ms'])}"
    )
