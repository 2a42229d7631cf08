"""Detection and embedding models served end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framewire.client import Client
from framewire.exporter.export import export_module
from framewire.exporter.writer import Preprocess
from support.artifacts import TinyNet
from support.images import encode, random_image
from support.server import RunningServer


@pytest.fixture(scope="module")
def task_server(tmp_path_factory):
    import torchvision

    repo = tmp_path_factory.mktemp("tasks")
    torch.manual_seed(0)
    detector = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None)
    export_module(detector, name="detector", version=1, repo=repo, architecture="torchvision/ssdlite320_mobilenet_v3_large",
                  task="detection", labels=[f"thing{i}" for i in range(91)])
    export_module(TinyNet.build(num_classes=16), name="embedder", version=1, repo=repo, task="embedding",
                  preprocess=Preprocess(resize_mode="exact", crop=(32, 32)))
    with RunningServer(repo=str(repo), max_batch_size=4) as server:
        yield server


def test_detections_come_back_in_original_pixel_coordinates(task_server):
    with Client(task_server.address) as c:
        pred = c.predict(encode(random_image(1, 120, 200)), model="detector", score_threshold=0.0,
                         max_detections=20, return_raw=True)
    assert (pred.width, pred.height) == (200, 120)
    assert 0 < len(pred.detections) <= 20
    scores = [d.score for d in pred.detections]
    assert scores == sorted(scores, reverse=True)
    for d in pred.detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= 200 and 0 <= y1 <= y2 <= 120
        assert d.label == f"thing{d.label_index}"
    assert pred.raw["boxes"].shape[1] == 4


def test_detection_images_of_different_sizes_share_a_batch(task_server):
    with Client(task_server.address) as c:
        preds = c.batch_predict([encode(random_image(i, 100 + 20 * i, 150)) for i in range(3)],
                                model="detector", score_threshold=0.0)
    assert [(p.width, p.height) for p in preds] == [(150, 100), (150, 120), (150, 140)]


def test_embeddings(task_server):
    with Client(task_server.address) as c:
        pred = c.predict(encode(random_image(2)), model="embedder")
        again = c.predict(encode(random_image(2)), model="embedder")
    assert len(pred.embedding) == 16 and pred.classes == []
    np.testing.assert_allclose(pred.embedding, again.embedding)
