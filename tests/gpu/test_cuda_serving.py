"""The CUDA path: fp16/bf16 serving, batching on the GPU, out-of-memory splits."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import torch

from framewire.client import Client
from framewire.exporter import load_model
from framewire.service.device_model import DeviceModel
from framewire.service.pixels import Prepared
from framewire.service.preprocess import PreprocessSpec, prepare
from framewire.service.tasks import task_handler
from framewire.service.worker_settings import WorkerSettings
from framewire.v1 import artifact_pb2 as pb
from support.images import CAT_CLASSES, encode, random_image
from support.server import RunningServer


@pytest.mark.parametrize("dtype, tolerance", [("float16", 0.15), ("bfloat16", 0.6), ("float32", 1e-2)])
def test_the_demo_model_sees_a_cat_on_cuda(demo_repo, demo_artifact, chelsea, chelsea_jpeg, dtype, tolerance):
    with RunningServer(repo=str(demo_repo), device="cuda", dtype=dtype, max_batch_size=8) as server, \
            Client(server.address) as c:
        pred = c.predict(chelsea_jpeg, model="efficientnet_lite0", return_raw=True)
        assert pred.device.startswith("cuda:")
        assert pred.top.index in CAT_CLASSES
        assert c.get_model("efficientnet_lite0").serving_dtype == dtype
    loaded = load_model(demo_artifact)
    from framewire.service.preprocess import decode_image

    x, _ = prepare(decode_image(chelsea_jpeg, max_pixels=10**8, max_bytes=10**8), PreprocessSpec.from_artifact(loaded.artifact))
    with torch.inference_mode():
        reference = loaded.module(x[None])[0].numpy()
    assert np.abs(pred.raw["logits"] - reference).max() < tolerance


def test_auto_picks_every_gpu(demo_repo):
    with RunningServer(repo=str(demo_repo), device="auto") as server, Client(server.address) as c:
        status = c.server_status()
    assert status.device_fallback_reason == ""
    assert [d.name for d in status.devices] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert status.devices[0].memory_total_bytes > 0 and status.devices[0].memory_allocated_bytes > 0


def test_concurrent_requests_batch_on_the_gpu(demo_repo):
    images = [encode(random_image(i, 240, 320), "JPEG") for i in range(64)]
    with RunningServer(repo=str(demo_repo), device="cuda", max_batch_size=32, max_queue_delay_us=20_000) as server:
        def one(image):
            with Client(server.address) as c:
                return c.predict(image, model="efficientnet_lite0")

        with cf.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, images))
    assert max(a.timing["batch_size"] for a in answers) > 1


class AllocatesPerImage(torch.nn.Module):
    """Allocates `fraction` of the free device memory per image: a real CUDA OOM above a batch size."""

    def __init__(self, per_image_bytes: int):
        super().__init__()
        self.per_image = per_image_bytes
        self.linear = torch.nn.Linear(12, 4)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        scratch = torch.empty(self.per_image * x.shape[0], dtype=torch.uint8, device=x.device)
        del scratch
        return self.linear(x.flatten(1))


def test_a_real_out_of_memory_error_splits_the_batch():
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    module = AllocatesPerImage(int(free * 0.3))  # 4 images need 120% of free memory, 2 need 60%
    artifact = pb.ModelArtifact(name="oom", version=1, task=pb.TASK_CLASSIFICATION)
    settings = WorkerSettings(model_id="oom:1", artifact="oom.fwa", device="cuda:0", channels_last=False)
    model = DeviceModel(module.eval(), task_handler(artifact), settings, cf.ThreadPoolExecutor(1), name="oom:1")
    items = [torch.randn(3, 2, 2) for _ in range(4)]
    outputs = model.forward(Prepared(torch.stack(items).to("cuda:0"), [0, 1, 2, 3])).output
    assert module.batches[0] == 4 and all(b <= 2 for b in module.batches[1:])
    assert len(outputs) == 4
    with torch.inference_mode():
        for item, out in zip(items, outputs):
            torch.testing.assert_close(out, module.linear.cpu()(item.flatten()), atol=1e-4, rtol=1e-4)


def test_cuda_graphs_give_the_eager_answers_at_every_batch_size(demo_artifact):
    from framewire.service.cuda_graphs import GraphedModule

    loaded = load_model(demo_artifact)
    module = loaded.module.to(device="cuda:0", dtype=torch.float16).to(memory_format=torch.channels_last)
    graphed = GraphedModule(module, device=torch.device("cuda:0"), dtype=torch.float16, sample_shape=(3, 224, 224),
                            buckets=[1, 2, 4, 8], channels_last=True)
    for size in (1, 3, 5, 8, 9):
        x = torch.randn(size, 3, 224, 224, device="cuda:0", dtype=torch.float16).contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode():
            expected = module(x).float()
            got = graphed(x).float().clone()
        torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


def test_a_server_with_cuda_graphs_sees_a_cat(demo_repo, chelsea_jpeg):
    with RunningServer(repo=str(demo_repo), device="cuda", cuda_graphs=True, max_batch_size=8) as server, \
            Client(server.address) as c:
        assert c.predict(chelsea_jpeg, model="efficientnet_lite0").top.index in CAT_CLASSES
        preds = c.batch_predict([chelsea_jpeg] * 5, model="efficientnet_lite0")
        assert all(p.top.index in CAT_CLASSES for p in preds)
