"""Constants and small helpers describing the artifact format.

Nothing here imports torch, so the CLI's `inspect` and the client side can use
it.
"""

from __future__ import annotations

import re
from typing import Any

from framewire.v1 import artifact_pb2 as pb

#: Format version written by this framewire. A reader accepts any minor
#: version of its own major and refuses a newer major.
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

#: File name of the artifact inside `<repo>/<model>/<version>/`.
ARTIFACT_FILENAME = "model.fwa"

#: Default size limit checked before a file is read (protobuf messages cannot
#: exceed 2 GiB anyway).
DEFAULT_MAX_ARTIFACT_BYTES = 2 * 1024**3 - 1

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

TASK_NAMES = {
    pb.TASK_CLASSIFICATION: "classification",
    pb.TASK_EMBEDDING: "embedding",
    pb.TASK_DETECTION: "detection",
}
TASKS_BY_NAME = {v: k for k, v in TASK_NAMES.items()}

DTYPE_NAMES = {
    pb.DATA_TYPE_FLOAT32: "float32",
    pb.DATA_TYPE_FLOAT16: "float16",
    pb.DATA_TYPE_BFLOAT16: "bfloat16",
    pb.DATA_TYPE_UINT8: "uint8",
    pb.DATA_TYPE_INT64: "int64",
}
DTYPES_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}

INTERPOLATION_NAMES = {
    pb.INTERPOLATION_BILINEAR: "bilinear",
    pb.INTERPOLATION_BICUBIC: "bicubic",
    pb.INTERPOLATION_NEAREST: "nearest",
}
INTERPOLATIONS_BY_NAME = {v: k for k, v in INTERPOLATION_NAMES.items()}

RESIZE_MODE_NAMES = {
    pb.RESIZE_MODE_NONE: "none",
    pb.RESIZE_MODE_SHORTER_SIDE: "shorter_side",
    pb.RESIZE_MODE_EXACT: "exact",
}

COLOR_ORDER_NAMES = {pb.COLOR_ORDER_RGB: "RGB", pb.COLOR_ORDER_BGR: "BGR"}


def architecture_summary(artifact: pb.ModelArtifact) -> str:
    """One line naming how the network is rebuilt."""
    kind = artifact.WhichOneof("architecture")
    if kind == "registry":
        reg = artifact.registry
        args = ", ".join(f"{k}={scalar_value(v)!r}" for k, v in sorted(reg.kwargs.items()))
        return f"{reg.builder}({args})"
    if kind == "graph":
        g = artifact.graph
        return (
            f"torch.export graph (schema {g.schema_version.major}.{g.schema_version.minor}, "
            f"torch {g.torch_version})"
        )
    return "none"


def scalar_value(value: pb.ScalarValue) -> Any:
    """The Python value held by a ScalarValue (None when it holds nothing)."""
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


def describe(artifact: pb.ModelArtifact, *, file_bytes: int | None = None) -> dict[str, Any]:
    """A JSON-able summary of an artifact, for `framewire inspect`."""
    inp, pre, out = artifact.input, artifact.preprocessing, artifact.output
    summary: dict[str, Any] = {
        "name": artifact.name,
        "version": artifact.version,
        "task": TASK_NAMES.get(artifact.task, "unspecified"),
        "format_version": f"{artifact.format_version.major}.{artifact.format_version.minor}",
        "architecture": architecture_summary(artifact),
        "input": {
            "channels": inp.channels,
            "height": inp.height,
            "width": inp.width,
            "dtype": DTYPE_NAMES.get(inp.dtype, "unspecified"),
            "layout": "NCHW" if inp.layout == pb.LAYOUT_NCHW else "unspecified",
            "color_order": COLOR_ORDER_NAMES.get(inp.color_order, "unspecified"),
            "min_batch": inp.min_batch,
            "max_batch": inp.max_batch,
        },
        "preprocessing": {
            "resize_mode": RESIZE_MODE_NAMES.get(pre.resize_mode, "unspecified"),
            "resize_shorter": pre.resize_shorter,
            "crop": [pre.crop_height, pre.crop_width],
            "interpolation": INTERPOLATION_NAMES.get(pre.interpolation, "unspecified"),
            "antialias": pre.antialias,
            "scale": pre.scale,
            "mean": [round(v, 6) for v in pre.mean],
            "std": [round(v, 6) for v in pre.std],
        },
        "outputs": [
            {"name": o.name, "dtype": DTYPE_NAMES.get(o.dtype, "unspecified"), "shape": list(o.shape)}
            for o in out.outputs
        ],
        "labels": len(out.labels),
        "parameters": artifact.parameter_count,
        "weights_bytes": len(artifact.weights),
        "weights_sha256": artifact.weights_sha256.hex(),
        "producer": {
            "framewire": artifact.producer.framewire_version,
            "torch": artifact.producer.torch_version,
            "torchvision": artifact.producer.torchvision_version,
        },
        "created_unix_seconds": artifact.created_unix_seconds,
        "signed": bool(artifact.signature.signature),
        "signing_key": artifact.signature.key_id,
        "description": artifact.description,
    }
    if artifact.WhichOneof("architecture") == "graph":
        summary["program_bytes"] = len(artifact.graph.program_json)
    if file_bytes is not None:
        summary["file_bytes"] = file_bytes
    return summary


def input_line(inp: dict[str, Any]) -> str:
    """The `input` of `describe` as one line: `3x224x224 float32 NCHW RGB, batch 1..64`."""
    return (f"{inp['channels']}x{inp['height']}x{inp['width']} {inp['dtype']} {inp['layout']} "
            f"{inp['color_order']}, batch {inp['min_batch']}..{inp['max_batch']}")


def preprocessing_line(pre: dict[str, Any]) -> str:
    """The `preprocessing` of `describe` as one line."""
    parts = []
    if pre["resize_mode"] == "shorter_side":
        parts.append(f"resize shorter side to {pre['resize_shorter']} ({pre['interpolation']})")
        parts.append(f"centre-crop {pre['crop'][0]}x{pre['crop'][1]}")
    elif pre["resize_mode"] == "exact":
        parts.append(f"resize to {pre['crop'][0]}x{pre['crop'][1]} ({pre['interpolation']})")
    else:
        parts.append("no resize")
    parts.append(f"scale {pre['scale']:.6g}")
    parts.append(f"mean {pre['mean']} std {pre['std']}")
    return ", ".join(parts)


def outputs_line(outputs: list[dict[str, Any]]) -> str:
    """The `outputs` of `describe` as one line: `logits [-1, 1000] float32, ...`."""
    return ", ".join(f"{o['name']} {o['shape']} {o['dtype']}" for o in outputs)


def aligned_rows(rows: list[tuple[str, Any]]) -> str:
    """`key  value` lines with the values aligned."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)
