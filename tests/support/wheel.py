"""framewire built as users install it: a wheel, installed (not editable)
into a fresh virtual environment, with no network.

`build_wheel` builds the wheel from a copy of the source tree (so the
checkout gains no build/ or egg-info); `fresh_venv` makes an environment
and installs the wheel without its dependencies; `provide` puts chosen
distributions of the running interpreter's environment into it (by symlink,
through a .pth file), so a test decides exactly which packages are there:
the client's dependencies only, or those plus an extra's.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".build", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", "*.fwa")


def build_wheel(out: Path) -> Path:
    """Build framewire's wheel into `out` and return its path."""
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(out), str(source)], check=True, timeout=300, capture_output=True)
    shutil.rmtree(source)
    (wheel,) = out.glob("framewire-*.whl")
    return wheel


def requirements(wheel: Path, extra: str | None = None) -> list[str]:
    """The distribution names the wheel requires (its core ones, or an extra's)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    names = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        spec = line.split(":", 1)[1]
        marker = spec.split(";", 1)[1] if ";" in spec else ""
        wanted = f"extra == \"{extra}\"" in marker if extra else "extra ==" not in marker
        if wanted:
            names.append(re.match(r"\s*([A-Za-z0-9_.-]+)", spec).group(1))
    return names


class Venv:
    """A virtual environment made for a test."""

    def __init__(self, path: Path):
        self.path = path
        self.python = path / "bin" / "python"
        self.site = Path(subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True).stdout.strip())
        self.provided = path / "provided"
        self.provided.mkdir()
        (self.site / "provided.pth").write_text(str(self.provided) + "\n")

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def provide(self, *distributions: str) -> None:
        """Make these distributions and what they depend on (their packages,
        .libs, dist-info) importable here, from the running interpreter's
        environment."""
        from packaging.requirements import Requirement

        pending, seen = list(distributions), set()
        while pending:
            name = pending.pop()
            key = re.sub(r"[-_.]+", "-", name).lower()
            if key in seen:
                continue
            seen.add(key)
            dist = importlib.metadata.distribution(name)
            for text in dist.requires or ():
                requirement = Requirement(text)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    pending.append(requirement.name)
            base = Path(dist.locate_file(""))
            tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
            for top in tops:
                target = self.provided / top
                if not target.exists() and (base / top).exists():
                    target.symlink_to(base / top)


def fresh_venv(path: Path, wheel: Path) -> Venv:
    """A new environment holding the wheel and nothing it depends on."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(path / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300, capture_output=True)
    return Venv(path)
