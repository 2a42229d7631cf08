"""Fixtures shared by every test folder."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# The console script of the interpreter running the tests comes first, so
# `.venv/bin/python -m pytest` works without activating the environment.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    """A real photo of a cat (scikit-image's bundled `chelsea`), RGB uint8."""
    import skimage.data

    return skimage.data.chelsea()


@pytest.fixture(scope="session")
def chelsea_jpeg(chelsea) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(chelsea).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@contextlib.contextmanager
def made_once(tmp_path_factory, name: str):
    """Yields (folder, fill): fill the folder when `fill` is true. Under
    pytest-xdist, the first worker fills it and the others wait and reuse it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield tmp_path_factory.mktemp(name), True
        return
    # The workers' temporary folders share one parent, made for this run.
    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fill = not done.exists()
            if fill:
                shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
                folder.mkdir()
            yield folder, fill
            if fill:
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory) -> Path:
    """A model repository holding the demo model, exported once per session the
    way users export it: `framewire export --demo` (test_demo_model.py checks
    what that command wrote)."""
    with made_once(tmp_path_factory, "demo-repo") as (repo, fill):
        if fill:
            framewire = shutil.which("framewire")
            assert framewire, "the framewire console script is not installed"
            done = subprocess.run([framewire, "export", "--demo", "--repo", str(repo)], capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"framewire export --demo failed:\n{done.stderr}"
    return repo


@pytest.fixture(scope="session")
def demo_artifact(demo_repo) -> Path:
    return demo_repo / "efficientnet_lite0" / "1" / "model.fwa"


@pytest.fixture(scope="session")
def framewire_wheel(tmp_path_factory) -> Path:
    """framewire's wheel, built once per test session (see support/wheel.py)."""
    from support.wheel import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))
