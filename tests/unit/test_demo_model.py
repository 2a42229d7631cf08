"""The demo model: a real cat photo, through the artifact, gives a cat."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from framewire.exporter import load_model
from framewire.exporter.demo import demo_source_model
from framewire.service.preprocess import PreprocessSpec, decode_image, prepare
from support.images import CAT_CLASSES


@pytest.fixture(scope="module")
def demo(demo_artifact):
    return load_model(demo_artifact)


def classify(model, x):
    with torch.inference_mode():
        return model(x[None])[0]


def test_the_demo_artifact_sees_a_cat_in_chelsea(demo, chelsea):
    x, _ = prepare(chelsea, PreprocessSpec.from_artifact(demo.artifact))
    logits = classify(demo.module, x)
    top = int(logits.argmax())
    assert top in CAT_CLASSES, demo.labels[top]
    assert demo.labels[top] in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_demo_logits_match_the_source_model(demo, chelsea):
    x, _ = prepare(chelsea, PreprocessSpec.from_artifact(demo.artifact))
    source = demo_source_model()
    diff = (classify(demo.module, x) - classify(source, x)).abs().max().item()
    assert diff <= 1e-4


def test_a_jpeg_of_chelsea_decodes_to_a_cat(demo, chelsea_jpeg):
    rgb = decode_image(chelsea_jpeg, max_pixels=40_000_000, max_bytes=10_000_000)
    assert rgb.shape == (300, 451, 3)
    x, _ = prepare(rgb, PreprocessSpec.from_artifact(demo.artifact))
    assert int(classify(demo.module, x).argmax()) in CAT_CLASSES


def test_the_demo_graph_serves_without_the_architecture_package(demo_artifact, tmp_path):
    # Loading must not import efficientnet_lite_pytorch: run the loader in a
    # fresh interpreter where that package cannot be imported.
    script = (
        "import sys; sys.modules['efficientnet_lite_pytorch'] = None\n"
        "import torch\nfrom framewire.exporter import load_model\n"
        f"m = load_model({str(demo_artifact)!r})\n"
        "print(tuple(m.module(torch.zeros(2, 3, 224, 224)).shape))\n"
    )
    out = subprocess.run([shutil.which("python") or "python", "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 1000)"


def test_the_cli_exports_and_inspects_the_demo(demo_repo, demo_artifact):
    # The session's demo repository is what `framewire export --demo` wrote (see conftest.py).
    assert (demo_repo / "efficientnet_lite0" / "1" / "model.fwa").is_file()
    framewire = shutil.which("framewire")
    assert framewire, "the framewire console script is not installed"
    shown = subprocess.run([framewire, "inspect", str(demo_artifact), "--json"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["name"] == "efficientnet_lite0" and summary["labels"] == 1000
    assert summary["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert summary["preprocessing"]["resize_shorter"] == 256
