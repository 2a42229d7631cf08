"""Product code never touches pickle, and torch.load only with weights_only=True."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ("framewire", "service", "exporter", "protos", "load_tests")
FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def product_files() -> list[Path]:
    files = [p for d in PRODUCT_DIRS for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 10, "product code not found; did the layout move?"
    return files


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{path}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.module and node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{path}:{node.lineno} imports from {node.module}")
        elif isinstance(node, ast.Call) and _is_torch_load(node.func):
            weights_only = [k for k in node.keywords if k.arg == "weights_only"]
            if not weights_only or not (
                isinstance(weights_only[0].value, ast.Constant) and weights_only[0].value.value is True
            ):
                found.append(f"{path}:{node.lineno} calls torch.load without weights_only=True")
    return found


def _is_torch_load(func: ast.expr) -> bool:
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "load"
        and isinstance(func.value, ast.Name)
        and func.value.id in {"torch", "serialization"}
    ) or (isinstance(func, ast.Attribute) and func.attr == "load" and ast.unparse(func.value) == "torch.serialization")


def test_product_code_has_no_pickle_and_no_unsafe_torch_load():
    violations = [v for f in product_files() for v in _violations(f)]
    assert violations == []


def test_the_scanner_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nfrom dill import loads\nimport torch\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\ntorch.load('x', weights_only=True)\n"
    )
    found = _violations(bad)
    assert len(found) == 4, found
