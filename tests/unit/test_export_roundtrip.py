"""Export, reload through the loader, and get the source model's numbers back."""

from __future__ import annotations

import json

import pytest
import torch

from framewire.cli import main as cli
from framewire.exporter import load_model, read_artifact
from framewire.exporter.errors import InvalidArtifactFieldError
from framewire.exporter.export import export_module
from framewire.v1 import artifact_pb2 as pb
from support.artifacts import TinyNet


def seeded_model(name: str, **kwargs):
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def save_weights(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_classifiers_round_trip_through_the_cli(tmp_path, name, capsys):
    source = seeded_model(name)
    weights = save_weights(source, tmp_path / "w.safetensors")
    rc = cli(["export", f"torchvision/{name}", "--repo", str(tmp_path / "repo"), "--weights", str(weights)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "max abs difference" in out

    path = tmp_path / "repo" / name / "1" / "model.fwa"
    loaded = load_model(path)
    assert loaded.artifact.registry.builder == f"torchvision/{name}"
    assert len(loaded.labels) == 1000 and loaded.labels[0] == "tench"
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), source(x))


def test_torchvision_preprocessing_defaults_are_recorded(tmp_path):
    source = seeded_model("efficientnet_b0")
    weights = save_weights(source, tmp_path / "w.safetensors")
    assert cli(["export", "torchvision/efficientnet_b0", "--repo", str(tmp_path), "--weights", str(weights),
                "--name", "effb0", "--version", "3"]) == 0
    artifact = read_artifact(tmp_path / "effb0" / "3" / "model.fwa")
    pre = artifact.preprocessing
    assert (pre.resize_shorter, pre.crop_height, pre.crop_width) == (256, 224, 224)
    assert pre.interpolation == pb.INTERPOLATION_BICUBIC
    assert [round(m, 3) for m in pre.mean] == [0.485, 0.456, 0.406]
    assert artifact.version == 3 and artifact.name == "effb0"


def test_legacy_state_dict_checkpoint_is_accepted(tmp_path):
    source = seeded_model("resnet18", num_classes=4)
    ckpt = tmp_path / "legacy.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, ckpt)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    rc = cli(["export", "torchvision/resnet18", "--repo", str(tmp_path), "--weights", str(ckpt),
              "--num-classes", "4", "--labels", str(labels), "--input-size", "160"])
    assert rc == 0
    loaded = load_model(tmp_path / "resnet18" / "1" / "model.fwa")
    assert loaded.labels == ["cat", "dog", "bird", "fish"]
    assert loaded.artifact.preprocessing.crop_height == 160
    assert loaded.artifact.preprocessing.resize_shorter == 183
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), source(x))


def test_weights_for_another_head_size_are_refused_with_a_hint(tmp_path, capsys):
    weights = save_weights(seeded_model("resnet18", num_classes=4), tmp_path / "w.safetensors")
    rc = cli(["export", "torchvision/resnet18", "--repo", str(tmp_path), "--weights", str(weights)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "weights do not fit torchvision/resnet18: fc.weight is [4, 512] in the weights but [1000, 512] in " \
           "the model; fc.bias is [4] in the weights but [1000] in the model; the weights have 4 classes: " \
           "pass --num-classes 4" in err
    assert not (tmp_path / "resnet18").exists()


def test_the_mismatch_names_missing_and_unexpected_tensors():
    from framewire.exporter.torchvision_export import mismatch_message

    message = mismatch_message({"a": [2], "b": [3, 3], "c": [1]}, {"a": [2], "b": [3, 4], "d": [1], "e": [1]})
    assert message == ("b is [3, 4] in the weights but [3, 3] in the model; 1 tensors missing from the weights (c); "
                       "2 tensors not in the model (d, e) (for a different number of classes pass --num-classes)")


def test_an_unknown_torchvision_model_is_the_exporters_refusal_with_close_names(tmp_path, capsys):
    assert cli(["export", "torchvision/resnet1", "--repo", str(tmp_path), "--random-init"]) == 1
    err = capsys.readouterr().err
    assert "has no model 'resnet1', so the exporter cannot build torchvision/resnet1 (did you mean resnet18" in err
    assert "allowlist" not in err


def test_export_without_weights_needs_random_init(tmp_path, capsys):
    assert cli(["export", "torchvision/resnet18", "--repo", str(tmp_path)]) == 1
    assert "--random-init" in capsys.readouterr().err
    assert cli(["export", "torchvision/resnet18", "--repo", str(tmp_path), "--random-init"]) == 0


def test_a_detection_model_round_trips(tmp_path):
    source = seeded_model("ssdlite320_mobilenet_v3_large", weights_backbone=None)
    weights = save_weights(source, tmp_path / "w.safetensors")
    assert cli(["export", "torchvision/ssdlite320_mobilenet_v3_large", "--repo", str(tmp_path),
                "--weights", str(weights), "--name", "ssd"]) == 0
    loaded = load_model(tmp_path / "ssd" / "1" / "model.fwa")
    assert loaded.task == "detection"
    assert [o.name for o in loaded.artifact.output.outputs] == ["boxes", "labels", "scores"]
    assert len(loaded.labels) == 91
    images = [torch.rand(3, 200, 260, generator=torch.Generator().manual_seed(2))]
    with torch.inference_mode():
        got, want = loaded.module(images)[0], source(images)[0]
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("batch", [1, 7])
def test_a_custom_module_round_trips_as_a_graph(tmp_path, batch):
    source = TinyNet.build()
    result = export_module(source, name="tiny", version=1, repo=tmp_path, architecture=None,
                           labels=list("abcde"), max_batch=64)
    assert result.max_abs_diff <= 1e-5
    artifact = read_artifact(result.path)
    assert artifact.WhichOneof("architecture") == "graph"
    assert list(artifact.graph.constant_names) == ["gain"]
    assert (artifact.input.min_batch, artifact.input.max_batch) == (1, 64)
    loaded = load_model(result.path)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), source(x), rtol=0, atol=1e-5)


def test_an_exported_program_can_be_given_directly(tmp_path):
    source = TinyNet.build(num_classes=3)
    batch = torch.export.Dim("batch", min=1, max=32)
    program = torch.export.export(source, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    from framewire.exporter.writer import Preprocess

    result = export_module(program, name="prog", version=2, repo=tmp_path, task="embedding",
                           preprocess=Preprocess(resize_shorter=72, crop=(64, 64)))
    loaded = load_model(result.path)
    assert loaded.task == "embedding" and loaded.artifact.output.outputs[0].shape == [-1, 3]
    x = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), source(x), rtol=0, atol=1e-5)


def test_labels_must_match_the_number_of_classes(tmp_path):
    with pytest.raises(InvalidArtifactFieldError, match="3 labels given but model 'tiny' outputs 5"):
        export_module(TinyNet.build(), name="tiny", version=1, repo=tmp_path, labels=["a", "b", "c"])


def test_bad_names_and_versions_are_refused(tmp_path):
    with pytest.raises(InvalidArtifactFieldError, match="model name"):
        export_module(TinyNet.build(), name="../etc", version=1, repo=tmp_path)
    with pytest.raises(InvalidArtifactFieldError, match="positive integer"):
        export_module(TinyNet.build(), name="ok", version=0, repo=tmp_path)


def test_versions_are_immutable_unless_overwritten(tmp_path):
    export_module(TinyNet.build(), name="tiny", version=1, repo=tmp_path)
    with pytest.raises(FileExistsError, match="immutable"):
        export_module(TinyNet.build(), name="tiny", version=1, repo=tmp_path)
    export_module(TinyNet.build(seed=3), name="tiny", version=1, repo=tmp_path, overwrite=True)


def test_inspect_prints_the_summary(tmp_path, capsys):
    result = export_module(TinyNet.build(), name="tiny", version=4, repo=tmp_path, labels=list("abcde"))
    capsys.readouterr()
    assert cli(["inspect", str(result.path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "tiny" and summary["version"] == 4 and summary["labels"] == 5
    assert summary["architecture"].startswith("torch.export graph")
    assert summary["parameters"] == sum(p.numel() for p in TinyNet.build().parameters())
    assert cli(["inspect", str(result.path)]) == 0
    text = capsys.readouterr().out
    assert "weights sha256" in text and "classification" in text


def test_verify_runs_the_artifact(tmp_path, capsys):
    result = export_module(TinyNet.build(), name="tiny", version=1, repo=tmp_path)
    capsys.readouterr()
    assert cli(["verify", str(result.path)]) == 0
    assert "all load-time checks passed" in capsys.readouterr().out
