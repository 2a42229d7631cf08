"""framewire: serve PyTorch vision models over gRPC from pickle-free artifacts."""

__version__ = "0.1.0"

from framewire.checkout import map_clone_folders as _map_clone_folders  # noqa: E402  (standard library only)

_map_clone_folders(__path__[0])
