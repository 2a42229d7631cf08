"""framewire imported from a clone maps the same folders packaging does."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import framewire
from framewire.checkout import CLONE_FOLDERS, clone_root

ROOT = Path(__file__).resolve().parents[2]


def test_the_clone_mapping_is_the_package_dir_of_pyproject():
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert {name: folder for name, folder in package_dir.items() if name != "framewire"} == CLONE_FOLDERS


def test_only_a_clone_is_recognised(tmp_path):
    assert clone_root(framewire.__path__[0]) == str(ROOT)
    installed = tmp_path / "site-packages" / "framewire"
    installed.mkdir(parents=True)
    assert clone_root(str(installed)) is None


def test_from_the_clones_root_a_bare_python_finds_every_subpackage_in_the_clone():
    # -S: no site-packages, so no installed copy and no editable install's finder; only the clone.
    script = ("import sys; sys.path.insert(0, '.')\n"
              "import framewire.service, framewire.v1, framewire.oip\n"
              "from importlib.util import find_spec\n"
              "print(framewire.service.__file__, framewire.v1.__file__, framewire.oip.__file__, "
              "find_spec('framewire.exporter').origin)")
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / folder / "__init__.py") for folder in
                                   ("service", "protos/framewire/v1", "protos/framewire/oip", "exporter")]
