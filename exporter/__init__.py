"""The framewire artifact format: export, read, check and verify.

Public API:

* :func:`export_module` exports a live ``nn.Module`` (by registry name or as a
  torch.export graph) and verifies the written file;
* :func:`export_torchvision` and :func:`export_demo` back the CLI's
  ``framewire export``;
* :func:`read_artifact` parses and checks a file without torch;
  :func:`load_model` rebuilds its network. They are the only readers of
  artifacts.
"""

from .errors import ArtifactError
from .format import ARTIFACT_FILENAME, FORMAT_MAJOR, FORMAT_MINOR, describe
from .loader import LoadedModel, load_model, parse_artifact, read_artifact

__all__ = [
    "ARTIFACT_FILENAME",
    "ArtifactError",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "LoadedModel",
    "describe",
    "export_demo",
    "export_module",
    "export_torchvision",
    "load_model",
    "parse_artifact",
    "read_artifact",
]


def __getattr__(name):
    # The export side imports torch; keep `import framewire.exporter` light.
    if name == "export_module":
        from .export import export_module

        return export_module
    if name == "export_torchvision":
        from .torchvision_export import export_torchvision

        return export_torchvision
    if name == "export_demo":
        from .demo import export_demo

        return export_demo
    raise AttributeError(name)
