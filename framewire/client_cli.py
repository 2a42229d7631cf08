"""Client-side CLI verbs: `framewire predict` and `framewire describe`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .connection import add_connection_arguments, connection_from_args
from framewire.v1.options import DEFAULT_TOP_K


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
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes to print per image")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print JSON lines, one per image")
    p.set_defaults(handler=_predict)

    p = sub.add_parser(
        "describe",
        help="ask a server what a model expects (input, preprocessing, labels, digests, versions)",
        description="Print what a running server says of a model (GetModel): task, architecture, input "
        "spec, preprocessing, outputs, labels, weight digests, signing key and every version's state.",
    )
    add_connection_arguments(p)
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", type=int, default=0, help="model version (default: newest READY)")
    p.add_argument("--labels", action="store_true", help="list the labels too")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_describe)


def _predict(args: argparse.Namespace) -> int:
    from .client import Client, FramewireError

    status = 0
    with Client(connection_from_args(args), timeout=args.timeout) as client:
        for path in args.images:
            if Path(path).is_dir():
                print(f"framewire predict: {path} is a folder; to score every image in it use "
                      f"framewire score {path} --model {args.model} --server {args.server} --out results.jsonl",
                      file=sys.stderr)
                status = 1
                continue
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


def _describe(args: argparse.Namespace) -> int:
    from .client import Client, FramewireError

    try:
        with Client(connection_from_args(args), timeout=args.timeout, retries=0) as client:
            info = client.get_model(args.model, args.version, include_labels=args.labels)
    except FramewireError as exc:
        print(f"framewire describe: {args.server}: {exc}", file=sys.stderr)
        return 1
    summary = model_summary(info)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from framewire.exporter.format import aligned_rows, input_line, outputs_line, preprocessing_line

    labels = f"{summary['label_count']}" + ("" if args.labels or not summary["label_count"] else " (--labels lists them)")
    rows = [
        ("model", f"{summary['name']} version {summary['version']}"),
        ("task", summary["task"]),
        ("architecture", summary["architecture"]),
        ("parameters", f"{summary['parameters']:,}"),
        ("input", input_line(summary["input"])),
        ("preprocessing", preprocessing_line(summary["preprocessing"])),
        ("outputs", outputs_line(summary["outputs"])),
        ("labels", labels),
        ("serving", f"{summary['serving_dtype']}, batches of up to {summary['max_batch_size']}"),
        ("weights sha256", summary["weights_sha256"]),
    ]
    if summary["program_sha256"]:
        rows.append(("program sha256", summary["program_sha256"]))
    rows.append(("signed", f"yes, key {summary['signing_key']}" if summary["signing_key"] else "no"))
    rows.append(("versions", "; ".join(
        f"{v['version']} {v['state']}" + (f" on {v['device']}" if v["device"] else "")
        + (f": {v['reason']}" if v["reason"] else "") for v in summary["versions"])))
    print(aligned_rows(rows))
    for index, label in enumerate(summary.get("labels", [])):
        print(f"  {index:>4}  {label}")
    return 0


def model_summary(info) -> dict:
    """A GetModelResponse as JSON-able data; input, preprocessing and outputs
    have the shape `framewire inspect --json` gives them."""
    from framewire.exporter.format import describe
    from framewire.v1 import artifact_pb2 as apb
    from framewire.v1 import inference_pb2 as pb

    artifact = describe(apb.ModelArtifact(input=info.input, preprocessing=info.preprocessing,
                                          output=apb.OutputSpec(outputs=info.outputs)))
    summary = {
        "name": info.name, "version": info.version, "task": info.task, "architecture": info.architecture,
        "parameters": info.parameter_count, "input": artifact["input"],
        "preprocessing": artifact["preprocessing"], "outputs": artifact["outputs"],
        "label_count": info.label_count, "max_batch_size": info.max_batch_size,
        "serving_dtype": info.serving_dtype, "weights_sha256": info.weights_sha256,
        "program_sha256": info.program_sha256, "signing_key": info.signing_key_id,
        "versions": [
            {"version": v.version, "state": pb.ModelState.Name(v.state).removeprefix("MODEL_STATE_"),
             "reason": v.reason, "device": v.device}
            for v in info.versions
        ],
    }
    if info.labels:
        summary["labels"] = list(info.labels)
    return summary
