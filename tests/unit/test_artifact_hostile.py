"""Broken and hostile artifacts: each refused with its own error, nothing run."""

from __future__ import annotations

import json
import struct

import pytest

from framewire.exporter import load_model, read_artifact
from framewire.exporter.architectures import ArchitectureRegistry
from framewire.exporter.errors import (
    ArchitectureArgumentError,
    ArtifactCorruptError,
    ArtifactDigestError,
    ArtifactTooLargeError,
    ArtifactVersionError,
    GraphProgramError,
    SafetensorsHeaderError,
    UnknownArchitectureError,
    WeightsMismatchError,
)
from framewire.exporter.export import export_module
from support import artifacts
from support.artifacts import TinyNet


@pytest.fixture(scope="module")
def graph_artifact(tmp_path_factory):
    repo = tmp_path_factory.mktemp("graph")
    return export_module(TinyNet.build(), name="tiny", version=1, repo=repo).path


@pytest.fixture(scope="module")
def registry_artifact(tmp_path_factory):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=3)
    repo = tmp_path_factory.mktemp("registry")
    return export_module(
        model, name="r18", version=1, repo=repo, architecture="torchvision/resnet18",
        kwargs={"num_classes": 3},
    ).path


def tampered(tmp_path, source, mutate, *, redigest=True):
    artifact = artifacts.read(source)
    mutate(artifact)
    return artifacts.write(artifact, tmp_path / "bad" / "model.fwa", redigest=redigest)


def test_a_truncated_file_is_refused(tmp_path, graph_artifact):
    data = graph_artifact.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 40):
        path = tmp_path / f"cut{cut}.fwa"
        path.write_bytes(data[:cut])
        with pytest.raises(ArtifactCorruptError):
            load_model(path)


def test_a_file_missing_its_digest_is_refused_as_truncated(tmp_path, graph_artifact):
    path = tampered(tmp_path, graph_artifact, lambda a: a.ClearField("weights_sha256"), redigest=False)
    with pytest.raises(ArtifactCorruptError, match="no weights digest"):
        load_model(path)


def test_random_bytes_are_not_an_artifact(tmp_path):
    path = tmp_path / "noise.fwa"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ArtifactCorruptError):
        read_artifact(path)


def test_one_flipped_byte_in_the_weights_is_caught(tmp_path, graph_artifact):
    data = bytearray(graph_artifact.read_bytes())
    weights = artifacts.read(graph_artifact).weights
    at = data.find(weights) + len(weights) // 2
    data[at] ^= 0x01
    path = tmp_path / "flipped.fwa"
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactDigestError, match="weights sha256"):
        load_model(path)


def test_a_flipped_byte_in_the_graph_program_is_caught(tmp_path, graph_artifact):
    def flip(a):
        program = bytearray(a.graph.program_json)
        program[len(program) // 2] ^= 0x01
        a.graph.program_json = bytes(program)

    path = tampered(tmp_path, graph_artifact, flip, redigest=False)
    with pytest.raises(ArtifactDigestError, match="graph program sha256"):
        load_model(path)


def test_overlapping_safetensors_offsets_are_refused(tmp_path, graph_artifact):
    header = json.dumps({
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(24)
    path = tampered(tmp_path, graph_artifact, lambda a: setattr(a, "weights", blob))
    with pytest.raises(SafetensorsHeaderError, match="overlaps"):
        load_model(path)


def test_a_header_length_of_two_to_the_sixtieth_is_refused(tmp_path, graph_artifact):
    blob = struct.pack("<Q", 2**60) + b"{}"
    path = tampered(tmp_path, graph_artifact, lambda a: setattr(a, "weights", blob))
    with pytest.raises(SafetensorsHeaderError, match="header length"):
        load_model(path)


def test_an_unknown_architecture_is_refused(tmp_path, registry_artifact):
    path = tampered(tmp_path, registry_artifact, lambda a: setattr(a.registry, "builder", "evil/backdoor"))
    with pytest.raises(UnknownArchitectureError, match="evil/backdoor"):
        load_model(path)
    path = tampered(tmp_path, registry_artifact, lambda a: setattr(a.registry, "builder", "torchvision/nope"))
    with pytest.raises(UnknownArchitectureError):
        load_model(path)


def test_a_non_scalar_keyword_argument_is_refused_before_building(tmp_path, registry_artifact):
    calls = []
    registry = ArchitectureRegistry(include_torchvision=False, include_entry_points=False)
    registry.register("torchvision/resnet18", lambda **kw: calls.append(kw))
    path = tampered(tmp_path, registry_artifact, lambda a: a.registry.kwargs["num_classes"].Clear())
    with pytest.raises(ArchitectureArgumentError, match="must be an int, float, bool or string"):
        load_model(path, registry=registry)
    assert calls == []


def test_a_weights_keyword_argument_is_refused(tmp_path, registry_artifact):
    path = tampered(tmp_path, registry_artifact,
                    lambda a: setattr(a.registry.kwargs["weights"], "string_value", "DEFAULT"))
    with pytest.raises(ArchitectureArgumentError, match="'weights' is not allowed"):
        load_model(path)


def _edit_program(artifact, edit):
    program = json.loads(artifact.graph.program_json)
    edit(program)
    artifact.graph.program_json = json.dumps(program).encode()


def _nodes(program):
    return program["graph_module"]["graph"]["nodes"]


def test_a_graph_calling_a_non_aten_target_is_refused(tmp_path, graph_artifact):
    def edit(program):
        _nodes(program)[0]["target"] = "torch.load"

    path = tampered(tmp_path, graph_artifact, lambda a: _edit_program(a, edit))
    with pytest.raises(GraphProgramError, match="'torch.load', which is not an aten or prims operator"):
        load_model(path)


def test_a_graph_calling_a_file_reading_aten_op_is_refused(tmp_path, graph_artifact):
    def edit(program):
        _nodes(program)[0]["target"] = "torch.ops.aten.from_file.default"

    path = tampered(tmp_path, graph_artifact, lambda a: _edit_program(a, edit))
    with pytest.raises(GraphProgramError, match="touches files"):
        load_model(path)


def test_a_symbolic_expression_cannot_run_code(tmp_path, graph_artifact):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def edit(program):
        values = program["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {"as_expr": {"expr_str": payload, "hint": {"as_int": 2}}}

    path = tampered(tmp_path, graph_artifact, lambda a: _edit_program(a, edit))
    with pytest.raises(GraphProgramError, match="symbolic expression"):
        load_model(path)
    assert not marker.exists()


def test_guard_code_in_a_graph_is_refused(tmp_path, graph_artifact):
    def edit(program):
        program["guards_code"] = ["__import__('os').system('true')"]

    path = tampered(tmp_path, graph_artifact, lambda a: _edit_program(a, edit))
    with pytest.raises(GraphProgramError, match="guard code"):
        load_model(path)


def test_a_graph_from_another_schema_major_is_refused(tmp_path, graph_artifact):
    def edit(program):
        program["schema_version"]["major"] += 1

    path = tampered(tmp_path, graph_artifact, lambda a: _edit_program(a, edit))
    with pytest.raises(GraphProgramError, match="re-export the model with a torch"):
        load_model(path)


def _from_a_newer_torch(artifact):
    """What a newer torch writes: a newer schema minor, a newer release, and an
    aten operator this torch does not have."""
    def edit(program):
        program["schema_version"]["minor"] += 1
        _nodes(program)[-1]["target"] = "torch.ops.aten.op_from_a_newer_torch.default"

    _edit_program(artifact, edit)
    artifact.graph.schema_version.minor += 1
    artifact.graph.torch_version = "99.0.0+cpu"


def test_a_graph_from_a_newer_torch_says_to_export_with_the_serving_torch(tmp_path, graph_artifact):
    import torch

    path = tampered(tmp_path, graph_artifact, _from_a_newer_torch)
    with pytest.raises(ArtifactVersionError) as info:
        load_model(path)
    message = str(info.value)
    assert "exported with torch 99.0.0+cpu" in message
    assert f"this is torch {torch.__version__}" in message
    assert f"export the model with the serving machine's torch version ({torch.__version__})" in message


def test_an_unknown_operator_from_the_same_torch_is_a_graph_error(tmp_path, graph_artifact):
    def edit(program):
        _nodes(program)[-1]["target"] = "torch.ops.aten.no_such_op.default"

    path = tampered(tmp_path, graph_artifact, lambda a: _edit_program(a, edit))
    with pytest.raises(GraphProgramError, match="torch could not rebuild the graph") as info:
        load_model(path)
    assert not isinstance(info.value, ArtifactVersionError)
    assert "serving machine" not in str(info.value)


def _replace_tensor(artifact, name, tensor):
    from safetensors.torch import load, save

    tensors = dict(load(artifact.weights))
    assert name in tensors
    tensors[name] = tensor
    artifact.weights = save(tensors)


def test_wrong_tensor_shapes_are_refused_for_registry_models(tmp_path, registry_artifact):
    import torch

    path = tampered(tmp_path, registry_artifact,
                    lambda a: _replace_tensor(a, "fc.weight", torch.zeros(7, 512)))
    with pytest.raises(WeightsMismatchError, match=r"'fc.weight' is \(7, 512\)"):
        load_model(path)


def test_wrong_tensor_dtypes_are_refused_for_registry_models(tmp_path, registry_artifact):
    import torch

    path = tampered(tmp_path, registry_artifact,
                    lambda a: _replace_tensor(a, "fc.bias", torch.zeros(3, dtype=torch.float16)))
    with pytest.raises(WeightsMismatchError, match="torch.float16"):
        load_model(path)


def test_wrong_tensor_shapes_are_refused_for_graphs(tmp_path, graph_artifact):
    import torch

    path = tampered(tmp_path, graph_artifact, lambda a: _replace_tensor(a, "head.weight", torch.zeros(5, 9)))
    with pytest.raises(WeightsMismatchError, match="head.weight"):
        load_model(path)


def test_missing_tensors_are_refused_for_graphs(tmp_path, graph_artifact):
    def drop(artifact):
        from safetensors.torch import load, save

        tensors = dict(load(artifact.weights))
        del tensors["conv.weight"]
        artifact.weights = save(tensors)

    path = tampered(tmp_path, graph_artifact, drop)
    with pytest.raises(WeightsMismatchError, match="conv.weight"):
        load_model(path)


def test_a_future_format_version_is_refused_naming_both_versions(tmp_path, graph_artifact):
    path = tampered(tmp_path, graph_artifact, lambda a: setattr(a.format_version, "major", 2))
    with pytest.raises(ArtifactVersionError, match=r"format 2\.0 is newer than this framewire reads \(1\.x\)"):
        load_model(path)


def test_a_newer_minor_version_is_accepted(tmp_path, graph_artifact):
    path = tampered(tmp_path, graph_artifact, lambda a: setattr(a.format_version, "minor", 9))
    assert load_model(path).name == "tiny"


def test_a_file_over_the_size_limit_is_refused_before_reading(graph_artifact):
    with pytest.raises(ArtifactTooLargeError, match="over the 1000-byte limit"):
        read_artifact(graph_artifact, max_bytes=1000)


def test_errors_name_the_file(tmp_path, graph_artifact):
    path = tampered(tmp_path, graph_artifact, lambda a: setattr(a.format_version, "major", 7))
    with pytest.raises(ArtifactVersionError) as info:
        read_artifact(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


def memory_growth_loading(path) -> tuple[str, int]:
    """Load `path` in a fresh process: (how it ended, how far its peak resident
    memory rose above the peak it had before loading, in bytes)."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        "import torch, torchvision, safetensors.torch\n"
        "from framewire.exporter import ArtifactError, load_model\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    load_model({str(path)!r}); print('loaded')\n"
        "except ArtifactError as exc:\n"
        "    print(type(exc).__name__, exc.reason)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    *said, growth_kib = out.strip().splitlines()
    return "\n".join(said), int(growth_kib) * 1024


def test_builder_arguments_that_disagree_with_the_weights_are_refused_before_allocating(tmp_path, registry_artifact):
    """num_classes=250000 would make a 512 MB classifier before the weights' shapes were compared."""
    path = tampered(tmp_path, registry_artifact, lambda a: setattr(a.registry.kwargs["num_classes"], "int_value", 250_000))
    said, growth = memory_growth_loading(path)
    assert said.startswith("WeightsMismatchError") and "'fc.weight' is (3, 512)" in said and "(250000, 512)" in said
    assert growth < 256 * 2**20, f"refusing took {growth / 2**20:.0f} MiB"
