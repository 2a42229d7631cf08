"""The protocol adapters stay thin: each reads a model only through its
ModelView, and neither adapter imports the other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

API = Path(__file__).resolve().parents[2] / "service" / "api"
#: Attributes of a served model or a repository slot that are its internals.
INTERNALS = ("runner", "batcher", "artifact", "served", "config", "dtype_name", "describe")


def sources() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(API.glob("*.py"))}


def test_the_servicers_read_models_only_through_their_view():
    reached = []
    for name, text in sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr in INTERNALS:
                owner = ast.unparse(node.value)
                if owner.split(".")[0] not in ("self", "servicer"):  # the servicer's own settings
                    reached.append(f"{name}:{node.lineno} {owner}.{node.attr}")
    assert reached == [], "servicers reach into a model's internals; add what they need to ModelView"


def test_neither_protocol_adapter_imports_the_other():
    texts = sources()
    assert not re.search(r"^from \.native|^from \. import .*\bnative\b", texts["oip.py"], re.M)
    assert not re.search(r"^from \.oip |^from \. import .*\boip\b", texts["native.py"], re.M)
