"""torch.export programs as data: serialize without pickle, check, rebuild.

torch.export's serializer (a private API, `torch._export.serde.serialize`)
turns an ExportedProgram into graph JSON plus tensor payloads. framewire
keeps only the JSON and puts the tensors in the artifact's safetensors blob.
At load time the JSON is checked before torch sees it:

* every node's target is an aten or prims operator (or one of a few pure
  Python operators on sizes, such as `getitem`), and never one that touches
  files;
* every symbolic expression (torch parses them with sympy, which evaluates
  its input) parses into the bounded arithmetic torch.export writes (see
  `sym_expr`): no constant raised to a power, no name off an allowlist;
* range constraints are integers of at most 64 bits;
* the program carries no guard code (torch would compile it to Python), no
  custom objects and no example inputs;
* node metadata is dropped.

Then the tensors are handed to the deserializer as dicts, so nothing is ever
unpickled.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import threading
from typing import Any

from .errors import ArtifactVersionError, GraphProgramError, WeightsMismatchError
from .sym_expr import MAX_INT_LITERAL, SYMBOL_NAME_RE, check_sym_expr

#: Targets outside torch.ops.aten / torch.ops.prims that a graph may call:
#: Python's own operators on sizes and tuple outputs.
PYTHON_OPERATOR_TARGETS = frozenset(
    "_operator." + name
    for name in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow",
        "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_",
    )
) | frozenset({"math.ceil", "math.floor", "math.trunc", "math.sqrt"})

#: aten operators that read or write files; never allowed in a graph.
DENIED_ATEN_OPS = frozenset({"from_file", "_print", "save"})

_TARGET_RE = re.compile(r"^torch\.ops\.(aten|prims)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")

# torch's graph deserializer keeps its state in a module global: two threads
# deserializing at once (two models loading) would trip over each other.
_DESERIALIZE_LOCK = threading.Lock()


def _torch_serde():
    from torch._export.serde import schema, serialize

    return schema, serialize


def current_schema_version() -> tuple[int, int]:
    """torch.export's serialization schema version in this torch."""
    schema, _ = _torch_serde()
    major, minor = schema.SCHEMA_VERSION
    return int(major), int(minor)


# ---------------------------------------------------------------- export side


def serialize_program(ep) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """JSON for an ExportedProgram, plus its state dict and constants.

    The JSON has node metadata and guard code stripped. Tensors are returned
    as dicts for the safetensors blob; torch's own tensor payloads (which it
    would pickle) are never produced.
    """
    _, serialize = _torch_serde()
    options = {}
    params = inspect.signature(serialize.serialize).parameters
    for flag in ("serialize_state_dict", "serialize_constants", "serialize_example_inputs"):
        if flag in params:
            options[flag] = False
    artifact = serialize.serialize(ep, **options)
    program = json.loads(artifact.exported_program)
    program["guards_code"] = []
    _strip_metadata(program)
    constants = dict(ep.constants)
    for name, value in constants.items():
        if not _is_tensor(value):
            raise GraphProgramError(
                f"program constant {name!r} is a {type(value).__name__}, not a tensor; "
                "framewire graphs may only hold tensors"
            )
    return json.dumps(program, separators=(",", ":")).encode(), dict(ep.state_dict), constants


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _strip_metadata(program: dict) -> None:
    graph_module = program.get("graph_module", {})
    graph_module["metadata"] = {}
    for node in _iter_nodes(program):
        node["metadata"] = {}


# ------------------------------------------------------------------ load side


def check_program(program_json: bytes, path: str | None = None) -> dict:
    """Parse and check program JSON; return the sanitized JSON object."""
    try:
        program = json.loads(program_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSON errors and oversized integers
        raise GraphProgramError(f"graph program is not valid JSON ({exc}); re-export the model", path) from None
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise GraphProgramError("graph program has no graph_module; re-export the model", path)

    version = program.get("schema_version") or {}
    major = version.get("major") if isinstance(version, dict) else None
    ours = current_schema_version()
    if major != ours[0]:
        raise GraphProgramError(
            f"graph was serialized with torch.export schema {major}.{version.get('minor')}, "
            f"this torch ({_torch_version()}) reads schema {ours[0]}.x; re-export the model "
            f"with a torch whose schema major version is {ours[0]}, such as this machine's "
            f"torch {_torch_version()}",
            path,
        )
    if program.get("guards_code"):
        raise GraphProgramError(
            "graph carries guard code, which torch would compile to Python; framewire "
            "never runs code from an artifact, re-export the model with framewire",
            path,
        )
    graph = program["graph_module"].get("graph") or {}
    if graph.get("custom_obj_values"):
        raise GraphProgramError("graph holds custom objects; only tensors are allowed", path)

    for node in _iter_nodes(program):
        _check_target(node.get("target"), path)
    _check_range_constraints(program.get("range_constraints"), path)
    _walk_values(program, path)
    _strip_metadata(program)
    return program


def expected_tensors(program: dict) -> tuple[set[str], set[str], set[str]]:
    """Names of (parameters, buffers, constants) the program's signature needs.

    Parameters and persistent buffers make the state dict; non-persistent
    buffers and lifted tensors are constants.
    """
    signature = program["graph_module"].get("signature") or {}
    params, buffers, constants = set(), set(), set()
    for spec in signature.get("input_specs", []):
        (kind, body), = spec.items()
        if kind == "parameter":
            params.add(body["parameter_name"])
        elif kind == "buffer":
            (buffers if body.get("persistent", True) else constants).add(body["buffer_name"])
        elif kind == "tensor_constant":
            constants.add(body["tensor_constant_name"])
        elif kind in ("custom_obj", "token"):
            raise GraphProgramError(f"graph input of kind {kind!r} is not supported")
    return params, buffers, constants


def rebuild_program(
    program: dict,
    state_dict: dict,
    constants: dict,
    path: str | None = None,
    *,
    exported_with: str | None = None,
):
    """Deserialize a checked program with the given tensors; return the module.

    `exported_with` is the torch version that exported the graph (recorded in
    the artifact); when torch cannot rebuild a graph from another torch, the
    error says so and what to do.
    """
    params, buffers, want_constants = expected_tensors(program)
    want_state = params | buffers
    have_state, have_constants = set(state_dict), set(constants)
    missing = (want_state - have_state) | (want_constants - have_constants)
    unexpected = (have_state - want_state) | (have_constants - want_constants)
    if missing or unexpected:
        raise WeightsMismatchError(
            f"weights do not match the graph: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; re-export the model",
            path,
        )
    import torch

    _, serialize = _torch_serde()
    state = {
        k: torch.nn.Parameter(v, requires_grad=False) if k in params else v
        for k, v in state_dict.items()
    }
    artifact = serialize.SerializedArtifact(json.dumps(program).encode(), state, dict(constants), b"")
    try:
        with _DESERIALIZE_LOCK:
            ep = serialize.deserialize(artifact)
    except Exception as exc:  # torch raises many types for a malformed graph
        raise _rebuild_error(program, exported_with, exc, path) from None
    _check_placeholder_tensors(ep, path)
    return ep


def _check_placeholder_tensors(ep, path: str | None) -> None:
    """Every lifted tensor must match the shape and dtype the graph traced."""
    signature = ep.graph_signature
    by_input = {}
    by_input.update(signature.inputs_to_parameters)
    by_input.update(signature.inputs_to_buffers)
    by_input.update(getattr(signature, "inputs_to_lifted_tensor_constants", {}))
    tensors = {**ep.state_dict, **ep.constants}
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in by_input:
            continue
        name = by_input[node.name]
        traced = node.meta.get("val")
        actual = tensors.get(name)
        if traced is None or actual is None:
            continue
        if tuple(traced.shape) != tuple(actual.shape) or traced.dtype != actual.dtype:
            raise WeightsMismatchError(
                f"tensor {name!r} is {tuple(actual.shape)} {actual.dtype} but the graph was "
                f"traced with {tuple(traced.shape)} {traced.dtype}; re-export the model",
                path,
            )


def _torch_version() -> str:
    import torch

    return torch.__version__


_RELEASE_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def _release(version: str | None) -> tuple[int, ...] | None:
    """(major, minor, patch) of a torch version string such as 2.14.1+cu130."""
    match = _RELEASE_RE.match(version or "")
    return tuple(int(g or 0) for g in match.groups()) if match else None


def _rebuild_error(program: dict, exported_with: str | None, exc: Exception, path: str | None):
    """The error for a graph torch could not deserialize.

    A graph from a newer torch (a newer schema minor, or a newer release with
    operators or operator arguments this torch lacks) is an ArtifactVersionError
    that says to export with the serving machine's torch; anything else is a
    GraphProgramError.
    """
    detail = str(exc) or type(exc).__name__
    if len(detail) > 300:
        detail = detail[:300] + "..."
    ours_version = _torch_version()
    version = program.get("schema_version") or {}
    theirs_schema = (version.get("major"), version.get("minor"))
    ours_schema = current_schema_version()
    theirs_release, ours_release = _release(exported_with), _release(ours_version)
    newer_schema = (
        all(isinstance(v, int) for v in theirs_schema) and theirs_schema > ours_schema
    )
    newer_release = bool(theirs_release and ours_release and theirs_release > ours_release)
    exporter = f"torch {exported_with[:64]}" if exported_with else "another torch"
    origin = (
        f"the graph was exported with {exporter} (torch.export schema "
        f"{theirs_schema[0]}.{theirs_schema[1]}); this is torch {ours_version} (schema "
        f"{ours_schema[0]}.{ours_schema[1]})"
    )
    if newer_schema or newer_release:
        return ArtifactVersionError(
            f"torch {ours_version} could not rebuild the graph ({detail}): {origin}, which "
            "cannot read graphs that use operators or fields added after it; export the "
            f"model with the serving machine's torch version ({ours_version}), or upgrade "
            "torch where it is served",
            path,
        )
    if theirs_schema != ours_schema or (
        theirs_release and ours_release and theirs_release[:2] != ours_release[:2]
    ):
        return GraphProgramError(
            f"torch could not rebuild the graph ({detail}): {origin}; export the model with "
            f"the serving machine's torch version ({ours_version})",
            path,
        )
    return GraphProgramError(f"torch could not rebuild the graph: {detail}", path)


def program_sha256(program_json: bytes) -> bytes:
    return hashlib.sha256(program_json).digest()


# ------------------------------------------------------------------- helpers


def _iter_nodes(obj):
    """Every graph node (a dict with target, inputs and outputs), nested too."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "target" in item and "inputs" in item and "outputs" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target, path: str | None) -> None:
    if not isinstance(target, str):
        raise GraphProgramError(f"graph node has a non-string target {target!r}", path)
    match = _TARGET_RE.match(target)
    if match:
        if match.group(2) in DENIED_ATEN_OPS:
            raise GraphProgramError(f"graph calls {target}, which touches files; refused", path)
        return
    if target in PYTHON_OPERATOR_TARGETS:
        return
    raise GraphProgramError(
        f"graph calls {target!r}, which is not an aten or prims operator; framewire only "
        "runs graphs of aten/prims operators (re-export without custom operators)",
        path,
    )


def _check_range_constraints(constraints, path: str | None) -> None:
    """Each symbol's range: integer bounds of at most 64 bits (or none)."""
    if constraints is None:
        return
    if not isinstance(constraints, dict):
        raise GraphProgramError("graph range constraints are malformed; re-export the model", path)
    for name, bounds in constraints.items():
        values = [bounds.get("min_val"), bounds.get("max_val")] if isinstance(bounds, dict) else [bounds]
        if not SYMBOL_NAME_RE.match(str(name)) or not all(
            v is None or (type(v) is int and abs(v) <= MAX_INT_LITERAL) for v in values
        ):
            raise GraphProgramError(
                f"graph range constraint {str(name)[:40]!r} is not a symbol with integer bounds of at "
                "most 64 bits; re-export the model",
                path,
            )


def _walk_values(obj, path: str | None) -> None:
    """Check every symbolic expression and operator reference in the JSON."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    check_sym_expr(value, path)
                elif key in ("as_operator", "as_custom_obj", "as_graph"):
                    raise GraphProgramError(
                        f"graph passes a {key[3:]} as an argument; only tensor and scalar "
                        "arguments are allowed",
                        path,
                    )
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
