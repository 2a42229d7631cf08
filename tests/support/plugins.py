"""An operator-installed architecture whose builder never returns.

framewire rebuilds registry architectures from torchvision and from builders
installed under the `framewire.architectures` entry-point group. The builder
made here stands for any load that never finishes: it computes one sum in a
single C call, holding the GIL and no memory. Processes see it when the
returned directory is on their PYTHONPATH.
"""

from __future__ import annotations

from pathlib import Path

from . import artifacts

HANGING_BUILDER = "hang/forever"


def install_hanging_architecture(directory: Path) -> Path:
    """Write the package and its distribution metadata into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hangarch.py").write_text(
        "def build(**kwargs):\n"
        "    return sum(range(10**18))  # never returns; no thread can interrupt it\n"
    )
    meta = directory / "hangarch-1.0.dist-info"
    meta.mkdir(exist_ok=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: hangarch\nVersion: 1.0\n")
    (meta / "entry_points.txt").write_text(f"[framewire.architectures]\n{HANGING_BUILDER} = hangarch:build\n")
    return directory


def hanging_artifact(source: Path, repo: Path, name: str = "hang", version: int = 1) -> Path:
    """A copy of the artifact at `source` whose architecture is the hanging builder."""
    artifact = artifacts.read(source)
    artifact.name, artifact.version = name, version
    artifact.registry.builder = HANGING_BUILDER  # replaces the graph
    return artifacts.write(artifact, repo / name / str(version) / "model.fwa")
