"""`framewire export torchvision/<name>`: registry models with their defaults.

Preprocessing and labels default to what torchvision records for the model's
pretrained weights (read from torchvision's code, never downloaded); flags
override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .architectures import TORCHVISION_PREFIX, default_registry
from .checkpoints import read_weights
from .errors import InvalidArtifactFieldError, UnknownArchitectureError, WeightsMismatchError
from .export import ExportResult, export_module
from .writer import Preprocess


def unknown_model_message(model: str) -> str:
    """Why the exporter cannot build torchvision/<model>, with the names it could."""
    import difflib

    import torchvision

    known = torchvision.models.list_models()
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.6)
    return (f"torchvision {torchvision.__version__} has no model {model!r}, so the exporter cannot build "
            f"torchvision/{model}" + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; torchvision.models.list_models() names them all")


def mismatch_message(expected: dict[str, list[int]], got: dict[str, list[int]], limit: int = 3) -> str:
    """Which tensors of the weights differ from the model's (shapes, missing,
    unexpected), and --num-classes N when only the classifier's size differs."""
    shapes = [k for k in expected if k in got and expected[k] != got[k]]
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    parts = [f"{k} is {got[k]} in the weights but {expected[k]} in the model" for k in shapes[:limit]]
    if len(shapes) > limit:
        parts.append(f"{len(shapes) - limit} more tensors differ in shape")
    for what, names in (("missing from the weights", missing), ("not in the model", unexpected)):
        if names:
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            parts.append(f"{len(names)} tensors {what} ({', '.join(names[:limit])}{more})")
    message = "; ".join(parts) or "the tensors do not match"
    classes = {got[k][0] for k in shapes if got[k][1:] == expected[k][1:]}
    if shapes and not missing and not unexpected and len(classes) == 1:
        count = classes.pop()
        message += f"; the weights have {count} classes: pass --num-classes {count}"
    elif shapes:
        message += " (for a different number of classes pass --num-classes)"
    return message


def torchvision_task(model: str) -> str:
    """classification or detection; other torchvision families are refused."""
    import torchvision.models as tvm

    if model in tvm.list_models(module=tvm):
        return "classification"
    if model in tvm.list_models(module=tvm.detection):
        return "detection"
    raise InvalidArtifactFieldError(
        f"torchvision/{model} is not a classification or detection model; framewire serves "
        "those two families from the registry (export others as a graph with --task embedding)"
    )


def torchvision_defaults(model: str, task: str) -> tuple[Preprocess, list[str]]:
    """The preprocessing and labels torchvision records for `model`."""
    import torchvision.models as tvm

    labels: list[str] = []
    try:
        weights = tvm.get_model_weights(model).DEFAULT
    except (ValueError, AttributeError, KeyError):
        weights = None
    if weights is not None:
        labels = list(weights.meta.get("categories") or [])
    if task == "detection":
        return Preprocess(resize_mode="none", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), labels
    preprocess = Preprocess()
    if weights is not None:
        transform = weights.transforms()
        crop = _first(getattr(transform, "crop_size", None), 224)
        resize = _first(getattr(transform, "resize_size", None), 256)
        preprocess = Preprocess(
            resize_shorter=resize,
            crop=(crop, crop),
            interpolation=getattr(getattr(transform, "interpolation", None), "value", "bilinear"),
            antialias=bool(getattr(transform, "antialias", True)),
            mean=tuple(getattr(transform, "mean", preprocess.mean)),
            std=tuple(getattr(transform, "std", preprocess.std)),
        )
    return preprocess, labels


def _first(value, default: int) -> int:
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    return int(value) if isinstance(value, int) else default


def read_labels(path: str | Path) -> list[str]:
    """One label per non-empty line."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise InvalidArtifactFieldError(f"labels file {path} is empty; give one label per line")
    return labels


def export_torchvision(
    builder: str,
    *,
    name: str,
    version: int,
    repo: str | Path,
    weights: str | Path | None = None,
    random_init: bool = False,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> ExportResult:
    """Build `torchvision/<model>`, load weights, export by registry name."""
    if not builder.startswith(TORCHVISION_PREFIX):
        raise InvalidArtifactFieldError(
            f"{builder!r}: name a torchvision model as torchvision/<name>, e.g. torchvision/resnet50"
        )
    if weights is None and not random_init:
        raise InvalidArtifactFieldError(
            "no --weights given: pass a .safetensors or state-dict checkpoint, or "
            "--random-init to export untrained weights on purpose"
        )
    model_name = builder[len(TORCHVISION_PREFIX) :]
    try:
        default_registry().resolve(builder)
    except UnknownArchitectureError:
        raise InvalidArtifactFieldError(unknown_model_message(model_name)) from None
    task = torchvision_task(model_name)
    preprocess, default_labels = torchvision_defaults(model_name, task)

    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    module = default_registry().build(builder, kwargs)
    if weights is not None:
        state = read_weights(weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError:
            expected = {k: list(v.shape) for k, v in module.state_dict().items()}
            got = {k: list(v.shape) for k, v in state.items()}
            raise WeightsMismatchError(f"weights do not fit {builder}: {mismatch_message(expected, got)}",
                                       weights) from None
        log(f"loaded {len(state)} tensors from {weights}")
    else:
        log("exporting randomly initialised weights (--random-init)")

    if labels is None:
        out_features = num_classes if num_classes is not None else len(default_labels)
        labels = default_labels if len(default_labels) == out_features else []
        if labels:
            log(f"labels: the {len(labels)} categories torchvision records for {model_name}")
    if input_size is not None and task == "classification":
        ratio = preprocess.resize_shorter / preprocess.crop[0]
        preprocess.crop = (input_size, input_size)
        preprocess.resize_shorter = int(round(input_size * ratio))
    if mean is not None:
        preprocess.mean = tuple(mean)
    if std is not None:
        preprocess.std = tuple(std)

    return export_module(
        module,
        name=name,
        version=version,
        repo=repo,
        architecture=builder,
        kwargs=kwargs,
        task=task,
        preprocess=preprocess,
        labels=list(labels),
        overwrite=overwrite,
        log=log,
    )
