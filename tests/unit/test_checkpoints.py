"""Legacy checkpoints are read with weights_only=True; code-carrying ones are refused."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch

from framewire.cli import main as cli
from framewire.exporter.checkpoints import read_weights
from framewire.exporter.errors import CheckpointError, UnsafeCheckpointError


def hostile_checkpoint(path, marker, call: str = "builtins.open") -> None:
    """A real torch zip checkpoint whose data.pkl calls `call`(marker, 'w').

    The pickle opcodes are written by hand: PROTO 2, GLOBAL module name,
    MARK, two BINUNICODE strings, TUPLE, REDUCE, STOP.
    """
    torch.save({"w": torch.zeros(2)}, path)
    def text(s: str) -> bytes:
        raw = s.encode()
        return b"X" + len(raw).to_bytes(4, "little") + raw
    module, name = call.rsplit(".", 1)
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(" + text(str(marker)) + text("w") + b"tR."
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info.filename)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info, data in entries:
            dst.writestr(info, payload if info.filename.endswith("data.pkl") else data)


def test_the_hostile_checkpoint_is_armed(tmp_path):
    # Proves the payload really runs under full unpickling, so the next test means something.
    ckpt, marker = tmp_path / "evil.pth", tmp_path / "created-by-unpickling"
    hostile_checkpoint(ckpt, marker)
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(ckpt)!r}, weights_only=False)"],
        capture_output=True,
    )
    assert marker.exists()


def test_export_refuses_a_checkpoint_that_needs_unpickling(tmp_path, capsys):
    ckpt, marker = tmp_path / "evil.pth", tmp_path / "created-by-unpickling"
    hostile_checkpoint(ckpt, marker)
    rc = cli(["export", "torchvision/resnet18", "--repo", str(tmp_path / "repo"), "--weights", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "references open, so unpickling it would run code" in err and "safetensors" in err
    assert not marker.exists()
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("call, named", [("posix.system", "posix.system"), ("os.system", "os.system"),
                                         ("builtins.open", "open"), ("builtins.eval", "eval")])
def test_the_refusal_names_the_global_and_never_advises_turning_the_check_off(tmp_path, call, named):
    """torch words these errors differently ("Unsupported global: GLOBAL open ...",
    "unsupported GLOBAL posix.system ..."), each wrapped in advice to load with
    weights_only=False; framewire's message names what the file would call."""
    ckpt, marker = tmp_path / "evil.pt", tmp_path / "m"
    hostile_checkpoint(ckpt, marker, call)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_weights(ckpt)
    message = info.value.reason
    assert f"references {named}, so unpickling it would run code" in message
    assert "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')" in message
    assert "weights_only" not in message and "False" not in message and "safe_globals" not in message
    assert not marker.exists()


def test_read_weights_raises_the_unsafe_error(tmp_path):
    ckpt, marker = tmp_path / "evil.pt", tmp_path / "m"
    hostile_checkpoint(ckpt, marker)
    with pytest.raises(UnsafeCheckpointError):
        read_weights(ckpt)
    assert not marker.exists()


def test_a_checkpoint_holding_a_module_object_is_refused(tmp_path):
    ckpt = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), ckpt)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        read_weights(ckpt)


def test_plain_and_wrapped_state_dicts_are_read(tmp_path):
    state = {"a.weight": torch.ones(2, 2), "a.bias": torch.zeros(2)}
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"model_state_dict": state, "optimizer": {"lr": 0.1}}, tmp_path / "wrapped.pth")
    for name in ("plain.pt", "wrapped.pth"):
        got = read_weights(tmp_path / name)
        assert set(got) == set(state) and torch.equal(got["a.weight"], state["a.weight"])


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "could not read"),
    (None, "does not exist"),
])
def test_unreadable_weights_files_are_reported(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_weights(path)


def test_unknown_weights_formats_are_refused(tmp_path):
    path = tmp_path / "w.onnx"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown weights format"):
        read_weights(path)
