"""Symbolic shape expressions of a graph artifact, parsed before torch sees them.

torch rebuilds a graph's symbolic sizes with `sympy.sympify`, which
evaluates its input as Python and simplifies as it goes: a name can reach
any Python object, and `9**9**9**9` is computed in full (one C call that
holds the GIL for ever). So every expression is first parsed here into a
small tree, and anything but the arithmetic torch.export writes is refused:

* names are symbol names (`s77`), a few constants and an allowlist of sympy
  and torch functions; `Symbol('s77', positive=True, ...)` takes a symbol
  name and assumption flags only;
* numbers are integer literals of at most 64 bits and short decimals;
* a power (`**`, `Pow`, `PowByNatural`, `FloatPow`) and a left shift need a
  base that contains a symbol and no power, and a small literal exponent, so
  no constant is ever raised to a power and no power nests;
* the expression's length, node count and nesting depth are bounded.

Nothing is evaluated: parsing only walks the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import GraphProgramError

MAX_EXPR_CHARS = 4096
MAX_NODES = 512
MAX_DEPTH = 32
#: Largest literal exponent of a power, and shift of a left shift.
MAX_EXPONENT = 8
MAX_SHIFT = 62
MAX_INT_LITERAL = 2**63 - 1

#: Functions an expression may call: sympy's and torch's own
#: (torch.utils._sympy.functions), as torch.export writes them.
FUNCTIONS = frozenset({
    "Symbol", "Integer", "Rational", "Float",
    "Add", "Mul", "Max", "Min", "Abs", "Mod", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "IntTrueDiv", "FloatTrueDiv", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
}) | {"Pow", "PowByNatural", "FloatPow", "LShift"}
#: Functions whose second argument is an exponent or a shift.
_POWERS = {"Pow": MAX_EXPONENT, "PowByNatural": MAX_EXPONENT, "FloatPow": MAX_EXPONENT, "LShift": MAX_SHIFT}
CONSTANTS = frozenset({"True", "False", "true", "false", "oo", "zoo", "nan"})
#: Keyword arguments of Symbol(): sympy assumptions, each True or False.
ASSUMPTIONS = frozenset({
    "integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite", "infinite",
    "zero", "nonzero", "even", "odd", "commutative",
})
SYMBOL_NAME_RE = re.compile(r"^[a-z]{1,8}\d{1,9}$")

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<string>'[^'\\]{0,64}')"
    r"|(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%(),=<>]))"
)
_COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")


@dataclass(frozen=True)
class Node:
    """One node of a parsed expression: `kind` is symbol, int, float,
    const, call (with `name`) or an operator; `children` its operands."""

    kind: str
    name: str = ""
    children: tuple["Node", ...] = ()
    value: int = 0

    @property
    def has_symbol(self) -> bool:
        return self.kind == "symbol" or (self.kind == "call" and self.name == "Symbol") or any(
            c.has_symbol for c in self.children)

    @property
    def has_power(self) -> bool:
        return self.kind == "**" or (self.kind == "call" and self.name in _POWERS) or any(
            c.has_power for c in self.children)


def check_sym_expr(expr, path: str | None = None) -> Node:
    """Parse a symbolic expression; GraphProgramError unless it is plain,
    bounded arithmetic (see the module doc). Returns the tree."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise GraphProgramError(
            f"graph holds a malformed symbolic expression (not text, or over {MAX_EXPR_CHARS} characters)", path)
    return _Parser(expr, path).parse()


class _Parser:
    """Recursive descent over the tokens, building Nodes and counting them."""

    def __init__(self, text: str, path: str | None):
        self.text = text
        self.path = path
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.nodes = 0

    def refuse(self, why: str) -> GraphProgramError:
        return GraphProgramError(f"graph holds a symbolic expression that {why}: {self.text[:80]!r}", self.path)

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text):
            if text[pos:].isspace():
                break
            match = _TOKEN_RE.match(text, pos)
            if not match or match.end() == pos:
                raise self.refuse(f"has a forbidden character at {pos}")
            kind = match.lastgroup
            tokens.append((kind, match.group(kind)))
            pos = match.end()
        return tokens

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise self.refuse("ends too early")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, op: str) -> None:
        kind, value = self.take()
        if kind != "op" or value != op:
            raise self.refuse(f"has {value!r} where {op!r} belongs")

    def node(self, kind: str, *children: Node, name: str = "", value: int = 0) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.refuse(f"has more than {MAX_NODES} terms")
        return Node(kind, name, children, value)

    def nest(self, depth: int) -> int:
        """One level deeper (parentheses, call arguments, unary signs), bounded."""
        if depth >= MAX_DEPTH:
            raise self.refuse(f"nests deeper than {MAX_DEPTH} levels")
        return depth + 1

    def parse(self) -> Node:
        tree = self.comparison(0)
        if self.pos != len(self.tokens):
            raise self.refuse(f"goes on after a complete expression ({self.peek()!r})")
        return tree

    def comparison(self, depth: int) -> Node:
        left = self.sum(depth)
        if self.peek() in _COMPARISONS:
            op = self.take()[1]
            left = self.node(op, left, self.sum(depth))
        return left

    def sum(self, depth: int) -> Node:
        left = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            left = self.node(op, left, self.term(depth))
        return left

    def term(self, depth: int) -> Node:
        left = self.unary(depth)
        while self.peek() in ("*", "/", "//", "%"):
            op = self.take()[1]
            left = self.node(op, left, self.unary(depth))
        return left

    def unary(self, depth: int) -> Node:
        if self.peek() in ("-", "+"):
            op = self.take()[1]
            return self.node("neg" if op == "-" else "pos", self.unary(self.nest(depth)))
        return self.power(depth)

    def power(self, depth: int) -> Node:
        base = self.atom(depth)
        if self.peek() != "**":
            return base
        self.take()
        exponent = self.atom(depth)
        self._check_power(base, exponent, MAX_EXPONENT)
        return self.node("**", base, exponent)

    def _check_power(self, base: Node, exponent: Node, limit: int) -> None:
        if not base.has_symbol:
            raise self.refuse("raises a constant to a power (sympy would compute it in full)")
        if base.has_power:
            raise self.refuse("nests powers")
        if exponent.kind != "int" or exponent.value > limit:
            raise self.refuse(f"has an exponent or shift other than a literal integer up to {limit}")

    def atom(self, depth: int) -> Node:
        kind, value = self.take()
        if kind == "number":
            return self.number(value)
        if kind == "op" and value == "(":
            inner = self.comparison(self.nest(depth))
            self.expect(")")
            return inner
        if kind != "name":
            raise self.refuse(f"has {value!r} where a value belongs")
        if self.peek() == "(":
            return self.call(value, depth)
        if value in CONSTANTS:
            return self.node("const", name=value)
        if SYMBOL_NAME_RE.match(value):
            return self.node("symbol", name=value)
        raise self.refuse(f"names {value!r}, which is not a symbol or an allowed constant")

    def number(self, text: str) -> Node:
        if re.fullmatch(r"\d+", text):
            value = int(text) if len(text) <= 19 else MAX_INT_LITERAL + 1
            if value > MAX_INT_LITERAL:
                raise self.refuse("has an integer literal larger than 64 bits")
            return self.node("int", value=value)
        mantissa, _, exponent = text.lower().partition("e")
        if len(mantissa) > 32 or (exponent and abs(int(exponent)) > 300):
            raise self.refuse("has a decimal literal out of range")
        return self.node("float")

    def call(self, name: str, depth: int) -> Node:
        if name not in FUNCTIONS:
            raise self.refuse(f"calls {name!r}, which is not an allowed sympy function")
        self.expect("(")
        depth = self.nest(depth)
        args: list[Node] = []
        if name == "Symbol":
            args.append(self.symbol_name())
        else:
            args.append(self.comparison(depth))
        while self.peek() == ",":
            self.take()
            if name == "Symbol":
                self.assumption()
            else:
                args.append(self.comparison(depth))
        self.expect(")")
        if name in _POWERS:
            if len(args) != 2:
                raise self.refuse(f"calls {name} with {len(args)} arguments")
            self._check_power(args[0], args[1], _POWERS[name])
        return self.node("call", *args, name=name)

    def symbol_name(self) -> Node:
        kind, value = self.take()
        if kind != "string" or not SYMBOL_NAME_RE.match(value[1:-1]):
            raise self.refuse("makes a Symbol whose name is not a symbol name such as 's0'")
        return self.node("symbol", name=value[1:-1])

    def assumption(self) -> None:
        kind, key = self.take()
        if kind != "name" or key not in ASSUMPTIONS:
            raise self.refuse(f"gives Symbol the argument {key!r}, which is not a sympy assumption")
        self.expect("=")
        kind, value = self.take()
        if kind != "name" or value not in ("True", "False"):
            raise self.refuse(f"sets the assumption {key} to {value!r}, not True or False")
