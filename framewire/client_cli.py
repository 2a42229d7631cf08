"""Client-side CLI verbs: `framewire predict`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .connection import add_connection_arguments, client_from_args


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="send images to a server and print the predictions",
        description="Send image files to a framewire server and print each one's top classes "
        "(or detections, or embedding size).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP)")
    add_connection_arguments(p)
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", type=int, default=0, help="model version (default: newest READY)")
    p.add_argument("--top-k", type=int, default=5, help="classes to print per image")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print JSON lines, one per image")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from .client import FramewireError

    status = 0
    with client_from_args(args, timeout=args.timeout) as client:
        for path in args.images:
            try:
                pred = client.predict(Path(path), model=args.model, version=args.version, top_k=args.top_k)
            except FramewireError as exc:
                print(f"framewire predict: {path}: {exc}", file=sys.stderr)
                status = 1
                continue
            except OSError as exc:
                print(f"framewire predict: {path}: {exc.strerror}", file=sys.stderr)
                status = 1
                continue
            if args.json:
                print(json.dumps(_as_json(path, pred)))
            else:
                _print_table(path, pred)
    return status


def _as_json(path: str, pred) -> dict:
    out = {"image": str(path), "model": pred.model, "version": pred.version, "device": pred.device,
           "timing": pred.timing}
    if pred.classes:
        out["classes"] = [{"index": c.index, "label": c.label, "score": c.score} for c in pred.classes]
    if pred.detections is not None:
        out["detections"] = [{"box": d.box, "label": d.label, "score": d.score} for d in pred.detections]
    if pred.embedding is not None:
        out["embedding"] = pred.embedding
    return out


def _print_table(path: str, pred) -> None:
    t = pred.timing
    print(f"{path}  ({pred.model} v{pred.version} on {pred.device}, {t['total_us'] / 1000:.1f} ms: "
          f"queue {t['queue_us'] / 1000:.1f}, compute {t['compute_us'] / 1000:.1f}, batch {t['batch_size']})")
    if pred.classes:
        width = max(len(c.label or str(c.index)) for c in pred.classes)
        for rank, c in enumerate(pred.classes, 1):
            print(f"  {rank}. {c.label or c.index!s:<{width}}  {c.score:.4f}")
    elif pred.detections is not None:
        for d in pred.detections:
            box = ", ".join(f"{v:.0f}" for v in d.box)
            print(f"  {d.label or d.label_index}  {d.score:.3f}  [{box}]")
        if not pred.detections:
            print("  no detections")
    elif pred.embedding is not None:
        print(f"  embedding of {len(pred.embedding)} values")
