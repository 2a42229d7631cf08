"""framewire imported from a clone finds its subpackages in the clone.

The repository keeps its top-level layout (service/, exporter/, protos/)
and packaging maps those folders into the one `framewire` package
(pyproject.toml, `[tool.setuptools.package-dir]`). A Python started in a
clone's root directory finds the clone's own framewire/ folder before any
installed copy, and that folder alone holds no `framewire.service`; so,
when framewire is imported from a clone, `map_clone_folders` teaches the
import system the same mapping packaging uses. The clone's code then runs
whole, whether it was installed editable, installed from a wheel or not
installed at all. An installed copy is not in a clone and maps nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

#: Subpackage -> its folder in a clone, relative to the clone's root: what
#: pyproject.toml's package-dir says (tests/unit/test_checkout.py holds them equal).
CLONE_FOLDERS = {
    "framewire.v1": "protos/framewire/v1",
    "framewire.oip": "protos/framewire/oip",
    "framewire.exporter": "exporter",
    "framewire.service": "service",
}


class CloneFinder(importlib.abc.MetaPathFinder):
    """Finds the subpackages of CLONE_FOLDERS in one clone."""

    def __init__(self, root: str):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        folder = CLONE_FOLDERS.get(fullname)
        if folder is None:
            return None
        location = os.path.join(self.root, folder)
        return importlib.util.spec_from_file_location(fullname, os.path.join(location, "__init__.py"),
                                                      submodule_search_locations=[location])


def clone_root(package_dir: str) -> str | None:
    """The clone `package_dir` (a framewire/ folder) sits in, or None when
    it is an installed copy."""
    root = os.path.dirname(os.path.abspath(package_dir))
    marks = ["pyproject.toml", *(os.path.join(folder, "__init__.py") for folder in CLONE_FOLDERS.values())]
    return root if all(os.path.isfile(os.path.join(root, mark)) for mark in marks) else None


def map_clone_folders(package_dir: str) -> None:
    """When `package_dir` is a clone's framewire/ folder, let its
    subpackages be found in the clone's folders (once per clone)."""
    root = clone_root(package_dir)
    if root is None or any(isinstance(f, CloneFinder) and f.root == root for f in sys.meta_path):
        return
    sys.meta_path.append(CloneFinder(root))
