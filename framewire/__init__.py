"""framewire: serve PyTorch vision models over gRPC from pickle-free artifacts."""

__version__ = "0.1.0"
