"""Every rpc of the native API against a real server, with real images."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from framewire.client import Client
from framewire.exporter import load_model
from framewire.service.preprocess import PreprocessSpec, prepare
from framewire.v1 import inference_pb2 as pb
from support.images import CAT_CLASSES, encode, random_image


def test_predict_sees_a_cat_and_says_who_served_it(client, chelsea_jpeg):
    pred = client.predict(chelsea_jpeg, model="efficientnet_lite0")
    assert pred.top.index in CAT_CLASSES
    assert (pred.model, pred.version, pred.device) == ("efficientnet_lite0", 1, "cpu")
    assert (pred.width, pred.height) == (451, 300)
    assert pred.timing["compute_us"] > 0 and pred.timing["batch_size"] >= 1
    assert pred.timing["total_us"] >= pred.timing["compute_us"]
    assert len(pred.classes) == 5 and pred.classes[0].score >= pred.classes[1].score


def test_served_logits_equal_the_canonical_torchvision_pipeline(client, chelsea, demo_artifact):
    from PIL import Image
    from torchvision import transforms as T

    png = encode(chelsea, "PNG")
    served = client.predict(png, model="efficientnet_lite0", return_raw=True).raw["logits"]
    loaded = load_model(demo_artifact)
    spec = PreprocessSpec.from_artifact(loaded.artifact)
    canonical = T.Compose([T.Resize(spec.resize_shorter), T.CenterCrop((spec.height, spec.width)), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    x = canonical(Image.open(io.BytesIO(png)).convert("RGB"))
    with torch.inference_mode():
        expected = loaded.module(x[None])[0].numpy()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-4)


def test_uint8_tensors_and_pil_images_match_encoded_images(client, chelsea):
    from PIL import Image

    via_png = client.predict(encode(chelsea, "PNG"), model="efficientnet_lite0", return_raw=True)
    via_array = client.predict(chelsea, model="efficientnet_lite0", return_raw=True)
    via_pil = client.predict(Image.fromarray(chelsea), model="efficientnet_lite0", return_raw=True)
    np.testing.assert_allclose(via_array.raw["logits"], via_png.raw["logits"], atol=1e-5)
    np.testing.assert_allclose(via_pil.raw["logits"], via_png.raw["logits"], atol=1e-5)


def test_float_tensors_already_preprocessed_are_run_as_given(client, chelsea, demo_artifact):
    loaded = load_model(demo_artifact)
    x, _ = prepare(chelsea, PreprocessSpec.from_artifact(loaded.artifact))
    pred = client.predict(x.numpy(), model="efficientnet_lite0", return_raw=True)
    assert pred.top.index in CAT_CLASSES
    with torch.inference_mode():
        expected = loaded.module(x[None])[0].numpy()
    np.testing.assert_allclose(pred.raw["logits"], expected, atol=1e-4)


def test_other_encodings_decode(client):
    image = random_image(3, 40, 50)
    answers = [client.predict(encode(image, fmt), model="tiny", return_raw=True).raw["logits"]
               for fmt in ("PNG", "BMP")]
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-6)
    webp = client.predict(encode(image, "WEBP", lossless=True), model="tiny", return_raw=True)
    np.testing.assert_allclose(webp.raw["logits"], answers[0], atol=1e-6)


def test_exif_orientation_is_honoured(client):
    from PIL import Image
    import io

    image = random_image(4, 40, 60)
    upright = client.predict(encode(image), model="tiny", return_raw=True).raw["logits"]
    rotated = Image.fromarray(np.rot90(image, k=1).copy())  # stored on its side...
    exif = Image.Exif()
    exif[0x0112] = 8  # ...and tagged "rotate 90 CW to display"
    buf = io.BytesIO()
    rotated.save(buf, format="JPEG", quality=100, subsampling=0, exif=exif)
    pred = client.predict(buf.getvalue(), model="tiny", return_raw=True)
    assert (pred.width, pred.height) == (60, 40)
    np.testing.assert_allclose(pred.raw["logits"], upright, atol=0.05)


def test_batch_predict_answers_in_order(client):
    images = [random_image(i) for i in range(12)]
    batch = client.batch_predict([encode(i) for i in images], model="tiny", return_raw=True)
    singles = [client.predict(encode(i), model="tiny", return_raw=True) for i in images]
    assert len(batch) == 12
    for got, want in zip(batch, singles):
        np.testing.assert_allclose(got.raw["logits"], want.raw["logits"], atol=1e-5)


def test_streams_come_back_in_frame_order_under_concurrency(server):
    frames = {cam: [encode(random_image(cam * 100 + i)) for i in range(25)] for cam in range(4)}

    def run_camera(cam):
        with Client(server.address, retries=0) as c:
            return list(c.stream(frames[cam], model="tiny", stream_id=f"cam{cam}", top_k=1))

    with cf.ThreadPoolExecutor(4) as pool:
        results = dict(zip(frames, pool.map(run_camera, frames)))
    with Client(server.address, retries=0) as c:
        expected = {cam: [c.predict(f, model="tiny", top_k=1).top.index for f in frames[cam]] for cam in frames}
    for cam, answers in results.items():
        assert [r.frame_number for r in answers] == list(range(25))
        assert all(r.ok and r.stream_id == f"cam{cam}" for r in answers)
        assert [r.prediction.top.index for r in answers] == expected[cam]


def test_one_bad_frame_does_not_end_the_stream(client):
    good = encode(random_image(1))
    results = list(client.stream([good, b"not an image", good], model="tiny"))
    assert [r.code for r in results] == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK]
    assert "not a readable JPEG, PNG, WebP or BMP" in results[1].message


def test_a_stream_must_name_a_model_and_keep_frame_numbers_increasing(server):
    stub = Client(server.address).stub
    frame = pb.Image(encoded=encode(random_image(2)))
    requests = [
        pb.StreamFrame(stream_id="a", frame_number=1, image=frame),
        pb.StreamFrame(stream_id="b", frame_number=5, image=frame, model="tiny"),
        pb.StreamFrame(stream_id="b", frame_number=5, image=frame),
        pb.StreamFrame(stream_id="b", frame_number=6, image=frame),
    ]
    results = list(stub.StreamPredict(iter(requests), timeout=60))
    assert len(results) == 4
    codes = [(r.stream_id, r.frame_number, r.status.code) for r in results]
    assert ("a", 1, grpc.StatusCode.INVALID_ARGUMENT.value[0]) in codes
    b_results = [r for r in results if r.stream_id == "b"]
    assert [r.status.code for r in b_results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    assert "frame numbers must increase" in b_results[1].status.message


def test_list_models(client):
    models = {m.name: m for m in client.list_models().models}
    assert set(models) == {"efficientnet_lite0", "tiny"}
    assert models["efficientnet_lite0"].task == "classification"
    version = models["tiny"].versions[0]
    assert (version.version, version.state, version.device) == (1, pb.MODEL_STATE_READY, "cpu")


def test_get_model(client):
    info = client.get_model("efficientnet_lite0", include_labels=True)
    assert (info.name, info.version, info.task) == ("efficientnet_lite0", 1, "classification")
    assert (info.input.height, info.input.width, info.input.channels) == (224, 224, 3)
    assert info.preprocessing.resize_shorter == 256 and list(info.preprocessing.mean) == [0.5] * 3
    assert info.label_count == 1000 and info.labels[285] == "Egyptian cat"
    assert info.max_batch_size == 8 and info.serving_dtype == "float32"
    assert info.architecture.startswith("torch.export graph")
    assert [v.state for v in info.versions] == [pb.MODEL_STATE_READY]
    assert not client.get_model("tiny").labels


def test_server_status(client):
    client.predict(encode(random_image(9)), model="tiny")
    status = client.server_status()
    assert status.serving and status.server_version
    assert [d.name for d in status.devices] == ["cpu"]
    tiny = next(m for m in status.models if m.model == "tiny")
    assert tiny.state == pb.MODEL_STATE_READY and tiny.inference_count >= 1
    assert tiny.request_success_count >= 1 and tiny.queue_depth == 0


def test_the_health_service_reports_serving(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "framewire.v1.ModelInference", "inference.GRPCInferenceService",
                        "framewire.model.tiny", "framewire.liveness"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in answer.list_services_response.service}
    assert {"framewire.v1.ModelInference", "grpc.health.v1.Health"} <= names


def test_requests_carry_a_request_id(server):
    stub = Client(server.address).stub
    request = pb.PredictRequest(model="tiny", image=pb.Image(encoded=encode(random_image(5))))
    _, call = stub.Predict.with_call(request, metadata=(("x-request-id", "abc123"),), timeout=30)
    assert dict(call.trailing_metadata())["x-request-id"] == "abc123"


def test_requests_without_an_id_get_a_fresh_one_each(server):
    stub = Client(server.address).stub
    request = pb.PredictRequest(model="tiny", image=pb.Image(encoded=encode(random_image(5))))
    ids = [dict(stub.Predict.with_call(request, timeout=30)[1].trailing_metadata())["x-request-id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize("k", [1, 3])
def test_top_k(client, k):
    assert len(client.predict(encode(random_image(7)), model="tiny", top_k=k).classes) == k


def run_cli(*args: str, stdout=None) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("framewire"), *args], stdout=stdout or subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)


def test_describe_says_what_a_model_expects(server, mixed_repo):
    from framewire.exporter import read_artifact

    done = run_cli("describe", "--server", server.address, "--model", "tiny", "--json", "--labels")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    artifact = read_artifact(mixed_repo / "tiny" / "1" / "model.fwa")
    assert (info["name"], info["version"], info["task"]) == ("tiny", 1, "classification")
    assert info["input"]["height"] == 32 and info["preprocessing"]["crop"] == [32, 32]
    assert info["labels"] == [f"class{i}" for i in range(5)] and info["label_count"] == 5
    assert info["weights_sha256"] == artifact.weights_sha256.hex()
    assert info["program_sha256"] == artifact.graph.program_sha256.hex()
    assert info["signing_key"] == "" and info["versions"] == [
        {"version": 1, "state": "READY", "reason": "", "device": "cpu"}]

    text = run_cli("describe", "--server", server.address, "--model", "efficientnet_lite0")
    assert text.returncode == 0, text.stderr
    rows = dict(line.split(None, 1) if not line.startswith(("weights", "program")) else
                (line[:14], line[14:].strip()) for line in text.stdout.splitlines())
    assert rows["labels"] == "1000 (--labels lists them)" and rows["versions"] == "1 READY on cpu"
    assert rows["input"].startswith("3x224x224 float32 NCHW RGB")
    assert rows["preprocessing"].startswith("resize shorter side to 256")
    assert rows["signed"] == "no"

    unknown = run_cli("describe", "--server", server.address, "--model", "nope")
    assert unknown.returncode == 1 and "NOT_FOUND: model 'nope' is not served here" in unknown.stderr


def test_predict_on_a_folder_points_to_score(server, tmp_path):
    done = run_cli("predict", "--server", server.address, "--model", "tiny", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"framewire predict: {tmp_path} is a folder; to score every image in it use "
                                   f"framewire score {tmp_path} --model tiny --server {server.address} "
                                   "--out results.jsonl")


def test_status_into_a_closed_pipe_exits_quietly(server):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head`) has gone
    try:
        done = run_cli("status", "--server", server.address, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


def test_the_readme_client_example_runs(server, chelsea_jpeg, tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                   if "from framewire.client import Client" in block)
    for name in ("cat.jpg", "a.jpg", "b.png", "f0.jpg", "f1.jpg", "f2.jpg"):
        (tmp_path / name).write_bytes(chelsea_jpeg)
    monkeypatch.chdir(tmp_path)
    exec(compile(example.replace("localhost:8500", server.address), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] in ("Egyptian", "tabby", "tiger")
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]  # every frame answered, in order
    assert all(line.split(None, 1)[1] in ("Egyptian cat", "tabby", "tiger cat") for line in lines[1:])
