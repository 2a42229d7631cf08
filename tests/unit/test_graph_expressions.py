"""Symbolic expressions in graph artifacts: only the arithmetic torch.export
writes gets through to torch (whose sympy parsing evaluates its input)."""

from __future__ import annotations

import json
import time

import pytest

from framewire.exporter import load_model
from framewire.exporter.errors import GraphProgramError
from framewire.exporter.export import export_module
from framewire.exporter.graph import check_program, check_sym_expr
from support import artifacts
from support.artifacts import TinyNet

SYMBOL = "Symbol('s77', positive=True, integer=True)"

#: Each would keep sympy (and the loading process) busy for ever, or until
#: memory runs out, if torch parsed it.
NEVER_ENDING = [
    f"{SYMBOL}+0*9**9**9**9",  # the reviewed attack: exponentiation of constants
    "s77 + 0*(9**9)**9",
    "s77*Pow(9, Pow(9, 9))",
    "s77 + PowByNatural(9, 999999999)",
    "s77 + FloatPow(9.0, 99999999)",
    "s77 + LShift(1, 99999999999)",
    "s77**99999999999",
    "(s77**8)**8",
    "s77 + 1" + "0" * 40,  # an integer past 64 bits
    "s77 + 1.5e99999",
    "(" * 200 + "s77" + ")" * 200,  # nesting
    "+".join(["s77"] * 2000),  # size
]


@pytest.mark.parametrize("expr", NEVER_ENDING)
def test_expressions_that_would_never_finish_are_refused(expr):
    with pytest.raises(GraphProgramError, match="symbolic expression"):
        check_sym_expr(expr)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')",
    "s77.__class__",
    "lambda: 1",
    "Symbol('s77', positive=__import__('os'))",
    "Symbol('not a symbol')",
    "s77[0]",
    "open('x')",
    "s77 if True else 1",
])
def test_expressions_that_are_not_arithmetic_are_refused(expr):
    with pytest.raises(GraphProgramError, match="symbolic expression"):
        check_sym_expr(expr)


@pytest.mark.parametrize("expr", [
    SYMBOL,
    "Symbol('s0', integer=True, nonnegative=True)",
    "s77", "2*s77", "s77 + 1", "-s77 + 4", "s77**2", "(s77 + 1)**2", "s77/2 - 1/2",
    "floor(s77/2)", "floor(s77/2 - 1/2) + 1", "ceiling(s77/3)", "FloorDiv(s77, 2)", "Max(1, s77)",
    "Min(s77, 256)", "CeilToInt(IntTrueDiv(s77, 3))", "ModularIndexing(s77, 1, 4)", "PythonMod(s77, 2)",
    "Mod(s77, 2)", "Eq(s77, 1)", "Ne(s77, 1)", "s77 <= 256", "s77 >= 2", "2 < s77", "True", "False",
    "Integer(3)*s77", "Rational(1, 2)*s77", "1.0*s77", "PowByNatural(s77, 2)", "RShift(s77, 1)",
    "LShift(s77, 2)", "TruncToInt(ToFloat(s77))", "9223372036854775807",
])
def test_the_arithmetic_torch_export_writes_is_accepted(expr):
    check_sym_expr(expr)


def test_the_reviewed_attack_is_refused_quickly_in_a_whole_program(tmp_path):
    """The review's file: the attack appended to a real graph's batch symbol."""
    path = export_module(TinyNet.build(), name="tiny", version=1, repo=tmp_path).path
    artifact = artifacts.read(path)
    program = json.loads(artifact.graph.program_json)
    text = json.dumps(program)
    assert SYMBOL in text
    started = time.monotonic()
    with pytest.raises(GraphProgramError, match="raises a constant to a power"):
        check_program(text.replace(SYMBOL, SYMBOL + "+0*9**9**9**9").encode())
    assert time.monotonic() - started < 5


def test_a_graph_with_shape_arithmetic_round_trips(tmp_path):
    """A graph whose shapes are arithmetic on the batch size (2*s, s*c) loads and runs."""
    import torch

    class Doubling(torch.nn.Module):
        def forward(self, x):
            y = torch.cat([x, x.flip(0)]).reshape(x.shape[0] * 2, -1)
            return y[: x.shape[0]].mean(dim=1, keepdim=True).expand(x.shape[0], 3)

    path = export_module(Doubling().eval(), name="doubling", version=1, repo=tmp_path, max_batch=64,
                         labels=["a", "b", "c"]).path
    loaded = load_model(path)
    x = torch.randn(5, 3, 224, 224)
    assert loaded.module(x).shape == (5, 3)
