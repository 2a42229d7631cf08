"""CLI verbs for artifacts: `export`, `inspect`, `verify`."""

from __future__ import annotations

import argparse
import json
import sys

from .child_load import DEFAULT_LOAD_TIMEOUT_SECONDS
from .errors import ArtifactError


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to a framewire artifact",
        description=(
            "Export a torchvision model (torchvision/<name>) with weights from a .safetensors "
            "file or a legacy state-dict checkpoint, or the demo model (--demo), into "
            "REPO/NAME/VERSION/model.fwa. The written file is reloaded and checked against "
            "the source model."
        ),
    )
    p.add_argument("architecture", nargs="?", help="registry name, e.g. torchvision/resnet50")
    p.add_argument("--demo", action="store_true", help="export the pretrained EfficientNet-Lite0 demo model")
    p.add_argument("--repo", required=True, help="model repository directory")
    p.add_argument("--name", help="model name (default: the architecture's name)")
    p.add_argument("--version", type=int, default=1, help="model version, a positive integer (default 1)")
    p.add_argument("--weights", help=".safetensors file or legacy .pt/.pth state dict (read with weights_only=True)")
    p.add_argument("--random-init", action="store_true", help="export untrained weights on purpose")
    p.add_argument("--num-classes", type=int, help="number of output classes, if not the default")
    p.add_argument("--labels", help="text file with one class label per line")
    p.add_argument("--input-size", type=int, help="square input size S (crop SxS; resize scaled alike)")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact of this version")
    p.set_defaults(handler=_export)

    p = sub.add_parser("inspect", help="print what an artifact holds", description="Print an artifact's metadata without loading its network.")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing artifacts",
        description="Write NAME.key (private; keep it secret) and NAME.pub (give it to servers' --trusted-keys).",
    )
    p.add_argument("--out", default=".", help="directory for the two files (default: here)")
    p.add_argument("--name", default="framewire-signing", help="file name stem")
    p.set_defaults(handler=_keygen)

    p = sub.add_parser(
        "sign",
        help="sign an artifact with an Ed25519 key",
        description="Check the artifact, then store in it a signature over its digests and identity. "
        "Servers given the public key (--trusted-keys) verify it; --require-signed refuses unsigned ones.",
    )
    p.add_argument("artifact")
    p.add_argument("--key", required=True, help="private key from `framewire keygen`")
    p.set_defaults(handler=_sign)

    p = sub.add_parser(
        "verify",
        help="load an artifact and run it on seeded inputs",
        description="Run every load-time check, rebuild the network and run it on seeded inputs, in a "
        "child process that is stopped if it overruns --load-timeout-seconds.",
    )
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--load-timeout-seconds", type=float, default=DEFAULT_LOAD_TIMEOUT_SECONDS,
                   help=f"stop a load that takes longer (default {DEFAULT_LOAD_TIMEOUT_SECONDS:g})")
    p.set_defaults(handler=_verify)


def _keygen(args: argparse.Namespace) -> int:
    from .signing import generate_key_pair, key_id, load_private_key

    try:
        private, public = generate_key_pair(args.out, args.name)
    except FileExistsError as exc:
        print(f"framewire keygen: {exc}", file=sys.stderr)
        return 1
    print(f"private key {private} (keep it secret), public key {public}, "
          f"key id {key_id(load_private_key(private).public_key())}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from .loader import read_artifact
    from .signing import load_private_key, sign
    from .writer import write_atomic

    try:
        artifact = read_artifact(args.artifact)
        key = load_private_key(args.key)
    except ArtifactError as exc:
        print(f"framewire sign: {exc}", file=sys.stderr)
        return 1
    sign(artifact, key)
    write_atomic(artifact, args.artifact, overwrite=True)
    print(f"signed {args.artifact} ({artifact.name} version {artifact.version}) with key {artifact.signature.key_id}")
    return 0


def _say(message: str) -> None:
    print(message, flush=True)


def _export(args: argparse.Namespace) -> int:
    try:
        if args.demo:
            if args.architecture:
                raise SystemExit("framewire export: give either --demo or an architecture, not both")
            from .demo import DEMO_NAME, export_demo

            result = export_demo(
                args.repo, name=args.name or DEMO_NAME, version=args.version,
                overwrite=args.overwrite, log=_say,
            )
        else:
            if not args.architecture:
                raise SystemExit("framewire export: name an architecture (torchvision/<name>) or pass --demo")
            from .torchvision_export import export_torchvision, read_labels

            result = export_torchvision(
                args.architecture,
                name=args.name or args.architecture.rsplit("/", 1)[-1],
                version=args.version,
                repo=args.repo,
                weights=args.weights,
                random_init=args.random_init,
                num_classes=args.num_classes,
                labels=read_labels(args.labels) if args.labels else None,
                input_size=args.input_size,
                mean=args.mean,
                std=args.std,
                overwrite=args.overwrite,
                log=_say,
            )
    except (ArtifactError, FileExistsError) as exc:
        print(f"framewire export: {exc}", file=sys.stderr)
        return 1
    _say(f"exported {result.artifact.name} version {result.artifact.version} to {result.path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import os

    from .format import aligned_rows, describe, input_line, outputs_line, preprocessing_line
    from .loader import read_artifact

    try:
        artifact = read_artifact(args.file)
    except ArtifactError as exc:
        print(f"framewire inspect: {exc}", file=sys.stderr)
        return 1
    summary = describe(artifact, file_bytes=os.stat(args.file).st_size)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    inp, pre = summary["input"], summary["preprocessing"]
    rows = [
        ("name", summary["name"]),
        ("version", summary["version"]),
        ("task", summary["task"]),
        ("architecture", summary["architecture"]),
        ("input", input_line(inp)),
        ("preprocessing", preprocessing_line(pre)),
        ("outputs", outputs_line(summary["outputs"])),
        ("labels", summary["labels"]),
        ("parameters", f"{summary['parameters']:,}"),
        ("file size", f"{summary['file_bytes']:,} bytes (weights {summary['weights_bytes']:,})"),
        ("weights sha256", summary["weights_sha256"]),
        ("format", summary["format_version"]),
        ("producer", f"framewire {summary['producer']['framewire']}, torch {summary['producer']['torch']}, "
                     f"torchvision {summary['producer']['torchvision'] or '-'}"),
        ("signed", f"yes, key {summary['signing_key']}" if summary["signed"] else "no"),
    ]
    if summary["description"]:
        rows.append(("description", summary["description"]))
    print(aligned_rows(rows))
    return 0


def _verify(args: argparse.Namespace) -> int:
    import importlib.util

    from .child_load import load_in_child
    from .loader import read_artifact_bytes

    if importlib.util.find_spec("torch") is None:  # the CLI names the extra to install
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    try:
        data = read_artifact_bytes(args.file)
        answer = load_in_child(data, args.file, timeout=args.load_timeout_seconds, verify=True)
    except ArtifactError as exc:
        print(f"framewire verify: {exc}", file=sys.stderr)
        return 1
    report = answer["report"]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{answer['name']} version {answer['version']}: all load-time checks passed")
    for run in report["runs"]:
        print(f"  batch {run['batch']}: outputs {run['shapes']}, finite, {run['seconds'] * 1000:.1f} ms")
    return 0
