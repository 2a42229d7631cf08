"""Exporting a live torch model to an artifact, and checking the result.

Two ways to carry the architecture:

* by registry name (`architecture="torchvision/resnet50"`): the server
  rebuilds the network from its own code and loads the weights strictly;
* as a torch.export graph (`architecture=None`): for networks the server has
  no code for; the batch dimension is dynamic.

Every export reloads the written file through the loader and compares its
outputs with the source model's on seeded inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from framewire.v1 import artifact_pb2 as pb

from . import format as fmt
from .architectures import check_kwargs, default_registry
from .errors import InvalidArtifactFieldError, VerificationError
from .loader import LoadedModel, load_model
from .writer import Preprocess, artifact_path, finish, write_atomic

DEFAULT_MAX_BATCH = 1024
DEFAULT_TOLERANCE = 1e-4
#: Image size used to check detection models (they take any size).
DETECTION_CHECK_SIZE = (240, 320)


@dataclass
class ExportResult:
    """What an export wrote and how closely the reloaded model matched."""

    path: Path
    artifact: pb.ModelArtifact
    max_abs_diff: float
    batch_sizes: tuple[int, ...]


def export_module(
    model,
    *,
    name: str,
    version: int,
    repo: str | Path | None = None,
    out: str | Path | None = None,
    architecture: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    task: str = "classification",
    preprocess: Preprocess | None = None,
    labels: Sequence[str] = (),
    channels: int = 3,
    color_order: str = "RGB",
    max_batch: int = DEFAULT_MAX_BATCH,
    description: str = "",
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> ExportResult:
    """Export `model` (an nn.Module, or an ExportedProgram when `architecture`
    is None) to `<repo>/<name>/<version>/model.fwa` (or to `out`).

    The model is put in eval mode. Returns the written path and the largest
    absolute difference between the source and the reloaded model.
    """
    import torch

    _check_identity(name, version)
    if (repo is None) == (out is None):
        raise ValueError("give exactly one of repo= or out=")
    if task not in fmt.TASKS_BY_NAME:
        raise InvalidArtifactFieldError(f"task {task!r} is not one of {sorted(fmt.TASKS_BY_NAME)}")
    preprocess = preprocess or (
        Preprocess(resize_mode="none", mean=(0.0,) * channels, std=(1.0,) * channels)
        if task == "detection"
        else Preprocess()
    )
    is_program = isinstance(model, torch.export.ExportedProgram)
    if not is_program:
        model.eval()
    height, width = (0, 0) if task == "detection" else preprocess.crop

    artifact = pb.ModelArtifact(
        name=name,
        version=version,
        task=fmt.TASKS_BY_NAME[task],
        description=description,
        preprocessing=preprocess.to_proto(),
        input=pb.InputSpec(
            channels=channels,
            height=height,
            width=width,
            dtype=pb.DATA_TYPE_FLOAT32,
            layout=pb.LAYOUT_NCHW,
            color_order=pb.COLOR_ORDER_RGB if color_order == "RGB" else pb.COLOR_ORDER_BGR,
            min_batch=1,
            max_batch=max_batch,
        ),
    )
    artifact.output.labels.extend(labels)

    source = model.module() if is_program else model
    check_inputs = _check_inputs(task, channels, height, width, graph=architecture is None)
    with torch.inference_mode():
        reference = [source(x) for x in check_inputs]
    artifact.output.outputs.extend(_output_specs(task, reference[0], len(labels), name))

    if architecture is not None:
        if is_program:
            raise ValueError("a registry architecture needs an nn.Module, not an ExportedProgram")
        kwargs = dict(kwargs or {})
        check_kwargs(kwargs)
        default_registry().resolve(architecture)
        artifact.registry.builder = architecture
        for key, value in kwargs.items():
            _set_scalar(artifact.registry.kwargs[key], value)
        tensors = dict(model.state_dict())
        artifact.parameter_count = sum(p.numel() for p in model.parameters())
    else:
        if task == "detection":
            raise InvalidArtifactFieldError(
                "detection models export by registry name (their inputs are lists of "
                "images, which torch.export graphs do not batch)"
            )
        tensors, param_count = _fill_graph(artifact, model, channels, height, width, max_batch)
        artifact.parameter_count = param_count

    finish(artifact, tensors)
    target = Path(out) if out is not None else artifact_path(repo, name, version)
    write_atomic(artifact, target, overwrite=overwrite)
    log(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")

    loaded = load_model(target)
    with torch.inference_mode():
        diff = max(_max_abs_diff(ref, loaded.module(x)) for ref, x in zip(reference, check_inputs))
    scale = max(1.0, max(_max_abs(ref) for ref in reference))
    batches = tuple(_batch_size(x) for x in check_inputs)
    log(f"verified: reloaded artifact vs source at batch sizes {batches}: max abs difference {diff:.3e}")
    if not diff <= tolerance * scale:
        target.unlink()
        raise VerificationError(
            f"the reloaded model differs from the source by {diff:.3e} (tolerance "
            f"{tolerance * scale:.1e}); the file was removed. Check that the model is "
            "deterministic in eval mode",
            target,
        )
    return ExportResult(target, artifact, diff, batches)


def _fill_graph(artifact, model, channels, height, width, max_batch):
    """Export to a torch.export program with a dynamic batch and record it."""
    import torch

    from . import graph

    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        example = torch.randn(2, channels, height, width)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    program_json, state, constants = graph.serialize_program(program)
    graph.check_program(program_json)
    g = artifact.graph
    g.program_json = program_json
    g.program_sha256 = graph.program_sha256(program_json)
    major, minor = graph.current_schema_version()
    g.schema_version.major, g.schema_version.minor = major, minor
    g.torch_version = torch.__version__
    g.constant_names.extend(sorted(constants))
    params = set(program.graph_signature.parameters)
    param_count = sum(t.numel() for k, t in state.items() if k in params)
    return {**state, **constants}, param_count


def _check_inputs(task, channels, height, width, *, graph: bool):
    import torch

    gen = torch.Generator().manual_seed(0)
    if task == "detection":
        h, w = DETECTION_CHECK_SIZE
        return [[torch.rand(channels, h, w, generator=gen) for _ in range(2)]]
    sizes = (1, 7) if graph else (2,)
    return [torch.randn(b, channels, height, width, generator=gen) for b in sizes]


def _batch_size(x) -> int:
    return len(x) if isinstance(x, list) else int(x.shape[0])


def _output_specs(task: str, output, num_labels: int, name: str) -> list[pb.TensorSpec]:
    import torch

    if task == "detection":
        if not (isinstance(output, list) and output and isinstance(output[0], dict)):
            raise InvalidArtifactFieldError("a detection model must return a list of dicts")
        missing = {"boxes", "labels", "scores"} - set(output[0])
        if missing:
            raise InvalidArtifactFieldError(f"detection outputs lack {sorted(missing)}")
        return [
            pb.TensorSpec(name="boxes", dtype=pb.DATA_TYPE_FLOAT32, shape=[-1, 4]),
            pb.TensorSpec(name="labels", dtype=pb.DATA_TYPE_INT64, shape=[-1]),
            pb.TensorSpec(name="scores", dtype=pb.DATA_TYPE_FLOAT32, shape=[-1]),
        ]
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise InvalidArtifactFieldError(
            f"a {task} model must return one [batch, features] tensor, got "
            f"{type(output).__name__} {getattr(output, 'shape', '')}"
        )
    width = int(output.shape[1])
    if task == "classification" and num_labels and num_labels != width:
        raise InvalidArtifactFieldError(
            f"{num_labels} labels given but model {name!r} outputs {width} classes; "
            "the labels file needs one line per class"
        )
    out_name = "logits" if task == "classification" else "embedding"
    return [pb.TensorSpec(name=out_name, dtype=pb.DATA_TYPE_FLOAT32, shape=[-1, width])]


def _max_abs_diff(a, b) -> float:
    import torch

    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return float("inf")
        if a.numel() == 0:
            return 0.0
        return float((a.double() - b.double()).abs().max())
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return float("inf")
        return max((_max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return float("inf")
        return max((_max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0 if a == b else float("inf")


def _max_abs(a) -> float:
    import torch

    if isinstance(a, torch.Tensor):
        return float(a.double().abs().max()) if a.numel() and a.is_floating_point() else 0.0
    if isinstance(a, dict):
        return max((_max_abs(v) for v in a.values()), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((_max_abs(v) for v in a), default=0.0)
    return 0.0


def _set_scalar(target: pb.ScalarValue, value) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.float_value = value
    else:
        target.string_value = value


def _check_identity(name: str, version: int) -> None:
    if not fmt.MODEL_NAME_RE.match(name or ""):
        raise InvalidArtifactFieldError(
            f"model name {name!r} is not valid: use letters, digits, '_', '.' and '-' "
            "(at most 128, starting with a letter or digit)"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArtifactFieldError(f"version must be a positive integer, got {version!r}")


def verify_artifact(path: str | Path, *, batch_sizes: Sequence[int] = (1, 2),
                    data: bytes | None = None) -> tuple[LoadedModel, dict]:
    """Load an artifact and run it on seeded inputs; check outputs against its spec.

    Returns the loaded model and a report (output shapes, finiteness, time).
    `data` is the file's bytes when already read. `framewire verify` runs
    this in a child process under a time budget (see `child_load`).
    """
    import time

    import torch

    loaded = load_model(path, data=data)
    art = loaded.artifact
    task = fmt.TASK_NAMES[art.task]
    inp = art.input
    report: dict[str, Any] = {"path": str(path), "runs": []}
    gen = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        batch = max(inp.min_batch, min(batch, inp.max_batch))
        if task == "detection":
            x = [torch.rand(inp.channels, *DETECTION_CHECK_SIZE, generator=gen) for _ in range(batch)]
        else:
            x = torch.randn(batch, inp.channels, inp.height, inp.width, generator=gen)
        start = time.perf_counter()
        with torch.inference_mode():
            y = loaded.module(x)
        elapsed = time.perf_counter() - start
        if task == "detection":
            shapes = {k: list(v.shape) for k, v in y[0].items()}
            finite = all(bool(torch.isfinite(v.float()).all()) for d in y for v in d.values())
            ok = len(y) == batch
        else:
            shapes = {art.output.outputs[0].name: list(y.shape)}
            finite = bool(torch.isfinite(y).all())
            ok = list(y.shape) == [batch, art.output.outputs[0].shape[1]]
        report["runs"].append(
            {"batch": batch, "shapes": shapes, "finite": finite, "ok": ok and finite, "seconds": elapsed}
        )
        if not (ok and finite):
            raise VerificationError(
                f"batch {batch}: outputs {shapes} (finite={finite}) do not match the artifact's "
                "output spec; re-export the model",
                path,
            )
    return loaded, report
