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


BRIGHT_REFUSING_BUILDER = "refuse/bright"


def install_bright_refusing_architecture(directory: Path) -> Path:
    """Write, into `directory`, an operator-installed architecture whose
    forward raises for a batch holding a (nearly) white image and answers
    any other: a model failing in its forward pass, for some inputs only."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "brightarch.py").write_text(
        "import torch\n\n\n"
        "class BrightRefusingNet(torch.nn.Module):\n"
        "    def __init__(self, num_classes=5):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.head = torch.nn.Linear(8, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        if bool((x.float().mean(dim=(1, 2, 3)) > 1.5).any()):\n"
        "            raise ValueError('this model refuses bright images')\n"
        "        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))\n\n\n"
        "def build(**kwargs):\n"
        "    return BrightRefusingNet(**kwargs)\n"
    )
    meta = directory / "brightarch-1.0.dist-info"
    meta.mkdir(exist_ok=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: brightarch\nVersion: 1.0\n")
    (meta / "entry_points.txt").write_text(
        f"[framewire.architectures]\n{BRIGHT_REFUSING_BUILDER} = brightarch:build\n")
    return directory


def bright_refusing_artifact(source: Path, repo: Path, plugin_dir: Path, name: str = "bright",
                             version: int = 1) -> Path:
    """A copy of the tiny artifact at `source` (its preprocessing: mean 0.5, std
    0.25, so a white image normalises to 2.0) whose architecture is the
    bright-refusing builder, with weights of its own."""
    import importlib.util

    import torch
    from safetensors.torch import save

    spec = importlib.util.spec_from_file_location("brightarch", plugin_dir / "brightarch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(11)
    artifact = artifacts.read(source)
    artifact.name, artifact.version = name, version
    artifact.registry.builder = BRIGHT_REFUSING_BUILDER  # replaces the graph
    artifact.weights = save({k: v.contiguous() for k, v in module.build(num_classes=5).state_dict().items()})
    return artifacts.write(artifact, repo / name / str(version) / "model.fwa")
