"""The allowlist of architectures a server may rebuild from an artifact.

An artifact's registry architecture is a *name* and scalar keyword
arguments. The name is looked up here, and only here: torchvision's model
registry (`torchvision/<name>`) and builders the operator installed through
the `framewire.architectures` entry-point group. Nothing in an artifact can
add to this list.
"""

from __future__ import annotations

import inspect
import threading
from importlib import metadata
from typing import Any, Callable

from .errors import ArchitectureArgumentError, UnknownArchitectureError

ENTRY_POINT_GROUP = "framewire.architectures"
TORCHVISION_PREFIX = "torchvision/"

#: Keyword arguments that would make a builder download weights or take
#: objects; an artifact may never set them.
FORBIDDEN_KWARGS = frozenset(
    {"weights", "weights_backbone", "pretrained", "pretrained_backbone", "progress"}
)

Builder = Callable[..., Any]


class ArchitectureRegistry:
    """Builders by name; refuses duplicates, resolves torchvision lazily."""

    def __init__(self, *, include_torchvision: bool = True, include_entry_points: bool = True):
        self._builders: dict[str, Builder] = {}
        self._include_torchvision = include_torchvision
        self._include_entry_points = include_entry_points
        self._entry_points_loaded = False
        self._lock = threading.Lock()

    def register(self, name: str, builder: Builder) -> None:
        """Add a builder; a name already registered is refused."""
        if not callable(builder):
            raise TypeError(f"builder for {name!r} is not callable")
        with self._lock:
            if name in self._builders:
                raise ValueError(f"architecture {name!r} is already registered")
            self._builders[name] = builder

    def names(self) -> list[str]:
        """Every name this registry can build."""
        self._load_entry_points()
        names = set(self._builders)
        if self._include_torchvision:
            names.update(TORCHVISION_PREFIX + n for n in _torchvision_models())
        return sorted(names)

    def resolve(self, name: str, path: str | None = None) -> Builder:
        """The builder for `name`, or UnknownArchitectureError."""
        self._load_entry_points()
        if name in self._builders:
            return self._builders[name]
        if self._include_torchvision and name.startswith(TORCHVISION_PREFIX):
            model = name[len(TORCHVISION_PREFIX) :]
            if model in _torchvision_models():
                return _torchvision_builder(model)
        raise UnknownArchitectureError(
            f"architecture {name!r} is not on this server's allowlist (torchvision/<name> for "
            f"torchvision's registry, or a builder installed under the {ENTRY_POINT_GROUP!r} "
            "entry-point group); install the package that provides it or re-export the model "
            "as a torch.export graph",
            path,
        )

    def build(self, name: str, kwargs: dict[str, Any], path: str | None = None):
        """Build the architecture with checked keyword arguments."""
        check_kwargs(kwargs, path)
        builder = self.resolve(name, path)
        try:
            return builder(**kwargs)
        except TypeError as exc:
            raise ArchitectureArgumentError(
                f"builder {name!r} rejected its keyword arguments {sorted(kwargs)}: {exc}", path
            ) from None

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self._include_entry_points:
            return
        with self._lock:
            if self._entry_points_loaded:
                return
            found = metadata.entry_points(group=ENTRY_POINT_GROUP)
            for ep in found:
                if ep.name in self._builders:
                    raise ValueError(
                        f"architecture {ep.name!r} is installed twice under {ENTRY_POINT_GROUP!r}"
                    )
                self._builders[ep.name] = _LazyEntryPoint(ep)
            self._entry_points_loaded = True


class _LazyEntryPoint:
    """Imports an entry point's builder the first time it is called."""

    def __init__(self, ep: metadata.EntryPoint):
        self._ep = ep
        self._fn: Builder | None = None

    def __call__(self, **kwargs):
        if self._fn is None:
            self._fn = self._ep.load()
        return self._fn(**kwargs)


def check_kwargs(kwargs: dict[str, Any], path: str | None = None) -> None:
    """Refuse non-scalar and forbidden keyword arguments."""
    for key, value in kwargs.items():
        if key in FORBIDDEN_KWARGS:
            raise ArchitectureArgumentError(
                f"keyword argument {key!r} is not allowed in an artifact (it would fetch or "
                "inject weights); weights travel in the artifact's safetensors blob",
                path,
            )
        if value is None or not isinstance(value, (bool, int, float, str)):
            raise ArchitectureArgumentError(
                f"keyword argument {key!r} must be an int, float, bool or string, "
                f"not {type(value).__name__}",
                path,
            )


def _torchvision_models() -> frozenset[str]:
    import torchvision.models

    return frozenset(torchvision.models.list_models())


def _torchvision_builder(model: str) -> Builder:
    import torchvision.models

    fn = torchvision.models.get_model_builder(model)
    params = inspect.signature(fn).parameters

    def build(**kwargs):
        # Never let a builder fetch weights: every weights argument is None.
        forced = {k: None for k in ("weights", "weights_backbone") if k in params}
        return fn(**forced, **kwargs)

    return build


_default: ArchitectureRegistry | None = None


def default_registry() -> ArchitectureRegistry:
    """The process-wide registry: torchvision plus installed entry points."""
    global _default
    if _default is None:
        _default = ArchitectureRegistry()
    return _default
