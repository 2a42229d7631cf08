"""Reading deploy/grafana/framewire.json: its panels, its queries, the metrics and labels they use.

A light PromQL reader (string literals, matchers, ranges and groupings set
aside) that is enough to list what a query reads; Prometheus itself parses
the queries in tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "framewire.json"

#: Words PromQL reserves that the identifier pattern below would take for metric names.
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                       "group_right", "bool", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"""([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{((?:\"(?:\\.|[^\"\\])*\"|[^{}\"])*)\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*)\)\s*$", re.S)
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


def _blank_strings(query: str) -> str:
    """The query with every string literal's contents blanked, lengths kept."""
    return _STRING.sub(lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 2) + m.group(0)[-1], query)


def label_values_args(query: str) -> tuple[str, str] | None:
    """(series selector, label) of a Grafana `label_values(...)` variable query."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return None
    inner = match.group(1)
    selector, comma, label = _blank_strings(inner).rpartition(",")
    if not comma:
        return "", inner.strip()
    return inner[: len(selector)].strip(), label.strip()


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL expression, or a `label_values()` variable query, reads."""
    args = label_values_args(query)
    if args is not None:
        query = args[0]
    text = _blank_strings(query)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if word in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue  # an operator, or a function or aggregation being called
        names.add(word)
    return names


def label_names(query: str) -> set[str]:
    """The label names a query matches on or groups by."""
    labels = set()
    args = label_values_args(query)
    if args is not None:
        query, label = args
        labels.add(label)
    text = _blank_strings(query)
    for matchers in _MATCHERS.findall(text):
        labels.update(name for name, _, _ in _MATCHER.findall(matchers))
    for grouping in _GROUPING.findall(text):
        labels.update(name.strip() for name in grouping.split(",") if name.strip())
    return labels


def selectors(query: str) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (operator, quoted value)}) for each `metric{...}` in a query."""
    for metric, matchers in _SELECTOR.findall(query):
        yield metric, {name: (op, value) for name, op, value in _MATCHER.findall(matchers)}


def unbalanced(query: str) -> str | None:
    """Why a query's brackets do not pair up, or None when they do."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for position, char in enumerate(_blank_strings(query)):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return f"unexpected {char!r} at {position}"
    return f"unclosed {''.join(stack)!r}" if stack else None


def missing_metrics(queries: list[tuple[str, str]], exported: set[str]) -> list[str]:
    """'where: name' for each metric a query reads that is not among the exported sample names."""
    return [f"{where}: {name}" for where, query in queries
            for name in sorted(metric_names(query)) if name not in exported]


# ------------------------------------------------------------------ dashboard

def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows and the panels inside (collapsed) rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def graphs(dashboard: dict) -> list[dict]:
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


def variable_query(variable: dict) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """('where', expr) for every panel target."""
    return [(f"panel {panel['title']!r} target {target['refId']}", target["expr"])
            for panel in graphs(dashboard) for target in panel["targets"]]


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """('where', query) for every panel target and every query variable."""
    return panel_queries(dashboard) + [
        (f"variable ${variable['name']}", variable_query(variable))
        for variable in dashboard["templating"]["list"] if variable["type"] == "query"]


def panel_unit(panel: dict) -> str | None:
    if panel["type"] == "heatmap":
        return panel["options"].get("yAxis", {}).get("unit")
    return panel["fieldConfig"]["defaults"].get("unit")
