"""A model worker process does not import grpc: it logs through
service/logs.py, which holds the request id itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker_imports() -> list[str]:
    """Every framewire module service/worker.py imports, at the top or
    inside a function (it imports most of them only when a model loads)."""
    tree = ast.parse((ROOT / "service" / "worker.py").read_text())
    found = {"framewire.service.worker"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.add(f"framewire.service.{node.module}" if node.module else "framewire.service")
            elif node.level == 0 and (node.module or "").startswith("framewire"):
                found.add(node.module)
    return sorted(found)


def test_the_worker_imports_its_logging_and_model_modules_without_grpc():
    modules = worker_imports()
    assert "framewire.service.logs" in modules and "framewire.service.device_model" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from framewire.service.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"a worker imports grpc: {run.stdout.strip()}"
