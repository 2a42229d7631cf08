"""The committed generated code matches the .proto sources (`make protos`)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
PINNED_GENCODE = "4.25"


def proto_sources() -> list[Path]:
    files = sorted(PROTO_ROOT.rglob("*.proto"))
    assert files, "no .proto files under protos/"
    return files


def compile_descriptors(tmp_path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    from grpc_tools import protoc

    out = tmp_path / "descriptors.pb"
    rel = [str(p.relative_to(PROTO_ROOT)) for p in proto_sources()]
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}", *rel])
    assert rc == 0, "protoc failed on protos/"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def normalized(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop what protoc versions fill in differently (json names)."""
    fd = descriptor_pb2.FileDescriptorProto.FromString(fd.SerializeToString())
    stack = list(fd.message_type)
    while stack:
        message = stack.pop()
        for field in message.field:
            field.ClearField("json_name")
        stack.extend(message.nested_type)
    return fd


def module_for(proto_name: str):
    return importlib.import_module(proto_name[: -len(".proto")].replace("/", ".") + "_pb2")


def test_generated_code_matches_proto_sources(tmp_path):
    compiled = compile_descriptors(tmp_path)
    stale = []
    for name, fresh in compiled.items():
        committed = descriptor_pb2.FileDescriptorProto.FromString(module_for(name).DESCRIPTOR.serialized_pb)
        if normalized(committed) != normalized(fresh):
            stale.append(name)
    assert stale == [], f"generated code is stale for {stale}: run `make protos`"


def test_generated_code_comes_from_the_pinned_protoc():
    # Newer protoc emits code that refuses protobuf runtimes older than itself;
    # the pinned generator keeps the code importable from protobuf 4.25 to 7.x.
    for src in proto_sources():
        generated = src.with_name(src.stem + "_pb2.py")
        header = generated.read_text().splitlines()[:6]
        versions = [re.search(r"Protobuf Python Version: (\S+)", line) for line in header]
        found = [m.group(1) for m in versions if m]
        assert found and found[0].startswith(PINNED_GENCODE), (generated, found)


def test_every_service_has_its_grpc_stub():
    for src in proto_sources():
        module = module_for(str(src.relative_to(PROTO_ROOT)))
        services = module.DESCRIPTOR.services_by_name
        if not services:
            continue
        grpc_module = importlib.import_module(module.__name__ + "_grpc")
        for service in services.values():
            assert hasattr(grpc_module, f"{service.name}Stub"), service.full_name
            assert hasattr(grpc_module, f"add_{service.name}Servicer_to_server"), service.full_name


@pytest.mark.parametrize("source", proto_sources(), ids=lambda p: p.name)
def test_every_field_and_rpc_is_commented(source):
    text = source.read_text().splitlines()
    uncommented = []
    for i, raw in enumerate(text):
        line = raw.strip()
        if line.startswith("rpc ") and not text[i - 1].strip().startswith("//"):
            uncommented.append(line)
        if re.match(r"^(repeated |map<.*> )?[\w.]+ \w+ = \d+;", line) and not text[i - 1].strip().startswith("//"):
            uncommented.append(line)
    assert uncommented == [], uncommented
