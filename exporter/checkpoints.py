"""Reading weights files given to the exporter, without running their code.

`.safetensors` files hold tensors only. Legacy `.pt`/`.pth` checkpoints are
read with `torch.load(..., weights_only=True)`, whose restricted unpickler
refuses anything but tensors and plain containers: a checkpoint that needs
more is refused, and none of its code runs.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import CheckpointError, UnsafeCheckpointError

LEGACY_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

#: Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def read_weights(path: str | Path) -> dict:
    """Tensors by name from a `.safetensors` file or a legacy state-dict checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file does not exist", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error type
            raise CheckpointError(f"not a readable safetensors file: {exc}", path) from None
    if path.suffix not in LEGACY_SUFFIXES:
        raise CheckpointError(
            f"unknown weights format {path.suffix!r}; give a .safetensors file or a "
            f"state-dict checkpoint ({', '.join(LEGACY_SUFFIXES)})",
            path,
        )
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises UnpicklingError and others
        text = str(exc)
        referenced = _referenced_global(text)
        if referenced is not None:
            raise UnsafeCheckpointError(
                f"this checkpoint references {referenced}, so unpickling it would run code; it holds more "
                "than tensors and framewire never unpickles. In a trusted environment, load it and save only "
                "the state dict with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'), "
                "then export that file",
                path,
            ) from None
        raise CheckpointError(
            f"could not read the checkpoint safely ({_reason(text)}); give a .safetensors file "
            "or a torch.save'd state dict",
            path,
        ) from None
    return _unwrap_state_dict(loaded, path)


#: The Python object a refused pickle names, in every wording torch uses
#: ("Unsupported global: GLOBAL open ...", "unsupported GLOBAL posix.system ...").
_GLOBAL_RE = re.compile(r"\bGLOBAL ([A-Za-z_][\w.]{0,200})")
#: Sentences of torch's message that advise turning the safety check off.
_ADVICE_RE = re.compile(r"weights_only|safe_globals|trust|can still be loaded|documentation|Weights only load failed",
                        re.IGNORECASE)


def _referenced_global(text: str) -> str | None:
    match = _GLOBAL_RE.search(text)
    return match.group(1).rstrip(".") if match else None


def _reason(text: str) -> str:
    """The informative part of torch's (long) load error, without its advice."""
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text.replace("\x1b[1m", "").replace("\x1b[0m", ""))
    kept = [s.strip() for s in sentences if s.strip() and not _ADVICE_RE.search(s)]
    reason = " ".join(" ".join(kept).split())
    return reason[:200] or "not a readable checkpoint"


def _unwrap_state_dict(loaded, path: Path) -> dict:
    import torch

    state = loaded
    for _ in range(3):
        if isinstance(state, dict) and not _all_tensors(state):
            nested = [k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)]
            if not nested:
                break
            state = state[nested[0]]
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        raise CheckpointError(
            "the checkpoint is not a state dict (a mapping of names to tensors); save "
            "model.state_dict() and export that",
            path,
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _all_tensors(mapping: dict) -> bool:
    import torch

    return all(isinstance(v, torch.Tensor) for v in mapping.values())
