"""framewire built as users install it: a wheel, installed (not editable)
into a fresh virtual environment, with no network.

`build_wheel` builds the wheel from a copy of the source tree (so the
checkout gains no build/ or egg-info). `fresh_venv` makes an environment,
puts into it the distributions the wheel requires (its core ones, plus an
extra's when asked), taken from the running interpreter's environment (by
symlink, through a .pth file: nothing is downloaded or copied), and then
installs the wheel with pip, not editable and with no index: pip resolves
the wheel's requirements (and the extra's) against what was put there and
fails if any is missing or of a version the wheel does not accept. So a
test decides exactly which packages are there. What is reused is the test
environment's installed packages; what is installed is the wheel itself.
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
    """The distribution names the wheel requires on this interpreter: its
    core ones, or an extra's."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    names = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        marker = requirement.marker
        core = marker is None or marker.evaluate({"extra": ""})
        wanted = (not core and marker.evaluate({"extra": extra})) if extra else core
        if wanted:
            names.append(requirement.name)
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

        pending = [(name, "") for name in distributions]
        seen: set[tuple[str, str]] = set()
        while pending:
            name, extra = pending.pop()
            key = (re.sub(r"[-_.]+", "-", name).lower(), extra)
            if key in seen:
                continue
            seen.add(key)
            dist = importlib.metadata.distribution(name)
            for text in dist.requires or ():
                requirement = Requirement(text)
                if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                    # What a requirement's extras bring counts too (torch needs cuda-toolkit[cublas,...]).
                    pending += [(requirement.name, wanted) for wanted in ("", *requirement.extras)]
            base = Path(dist.locate_file(""))
            tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
            for top in tops:
                target = self.provided / top
                if not target.exists() and (base / top).exists():
                    target.symlink_to(base / top)


def fresh_venv(path: Path, wheel: Path, extra: str | None = None) -> Venv:
    """A new environment holding the wheel (with `extra`) and, from the
    running environment, exactly the distributions that needs."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    venv = Venv(path)
    venv.provide(*requirements(wheel), *(requirements(wheel, extra) if extra else ()))
    target = f"{wheel}[{extra}]" if extra else str(wheel)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--quiet",
                           "--no-index", "--no-cache-dir", target], timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, f"pip install {target} failed:\n{done.stdout}{done.stderr}"
    return venv
