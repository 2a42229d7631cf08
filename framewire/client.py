"""A light framewire client: grpcio, protobuf, numpy and pillow; never torch.

    from framewire.client import Client

    with Client("localhost:8500") as client:
        prediction = client.predict("cat.jpg", model="efficientnet_lite0")
        print(prediction.top.label, prediction.top.score)

Images may be file paths (sent encoded, decoded by the server), encoded
bytes, PIL images or numpy arrays (uint8 HWC RGB of any size, or float32
CHW already preprocessed). Calls retry UNAVAILABLE answers (a full queue, a
restarting server) with exponential backoff and jitter
(`framewire.connection.RetryPolicy`). `Client.stream` sends frames on one
stream through `framewire.stream.CameraStream`, the one streaming client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import grpc
import numpy as np

from framewire.connection import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Connection,
    FramewireError,
    RetryPolicy,
    as_connection,
    tls_credentials,
)
from framewire.v1 import artifact_pb2 as apb
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc
from framewire.v1.options import DEFAULT_TOP_K
from framewire.v1.results import ClassScore, Detection

__all__ = ["Client", "ClassScore", "Connection", "DEFAULT_MAX_MESSAGE_BYTES", "Detection", "FramewireError",
           "Prediction", "RetryPolicy", "image_message", "predict_options", "prediction_from", "tls_credentials"]


@dataclass
class Prediction:
    """The answer for one image."""

    model: str
    version: int
    device: str
    width: int
    height: int
    classes: list[ClassScore] = field(default_factory=list)
    embedding: list[float] | None = None
    detections: list[Detection] | None = None
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    timing: dict[str, int] = field(default_factory=dict)

    @property
    def top(self) -> ClassScore:
        """The best class (classification models)."""
        if not self.classes:
            raise ValueError("this prediction holds no classes")
        return self.classes[0]


def image_message(image: Any) -> pb.Image:
    """Any accepted image form as a protobuf Image."""
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, (str, Path)):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=bytes(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"a uint8 image must be HxWx3 RGB, got shape {image.shape}")
            dtype = apb.DATA_TYPE_UINT8
        elif image.dtype == np.float32:
            if image.ndim not in (3, 4):
                raise ValueError(f"a float32 image must be CxHxW (preprocessed), got shape {image.shape}")
            dtype = apb.DATA_TYPE_FLOAT32
        else:
            raise ValueError(f"images must be uint8 (HxWx3) or float32 (CxHxW), not {image.dtype}")
        data = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<")).tobytes()
        return pb.Image(tensor=pb.Tensor(dtype=dtype, shape=list(image.shape), data=data))
    raise TypeError(f"cannot send {type(image).__name__} as an image; give a path, bytes, PIL image or array")


def predict_options(top_k: int = DEFAULT_TOP_K, score_threshold: float | None = None, max_detections: int = 0,
                    return_raw: bool = False) -> pb.PredictOptions:
    """The PredictOptions of a request (None and 0: the server's defaults)."""
    options = pb.PredictOptions(top_k=top_k, return_raw=return_raw, max_detections=max_detections)
    if score_threshold is not None:
        options.score_threshold = score_threshold
    return options


def _tensor_array(tensor: pb.Tensor) -> np.ndarray:
    dtype = {apb.DATA_TYPE_FLOAT32: "<f4", apb.DATA_TYPE_INT64: "<i8", apb.DATA_TYPE_UINT8: "u1"}[tensor.dtype]
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def prediction_from(message: pb.Prediction, served_by: pb.ServedBy, timing: pb.Timing | None = None) -> Prediction:
    """A protobuf Prediction as a Prediction."""
    pred = Prediction(
        model=served_by.model,
        version=served_by.version,
        device=served_by.device,
        width=message.image_width,
        height=message.image_height,
        raw={t.name: _tensor_array(t.tensor) for t in message.raw_outputs},
    )
    kind = message.WhichOneof("result")
    if kind == "classification":
        pred.classes = [ClassScore(c.index, c.label, c.score, c.logit) for c in message.classification.classes]
    elif kind == "embedding":
        pred.embedding = list(message.embedding.values)
    elif kind == "detections":
        pred.detections = [
            Detection((d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max), d.label_index, d.label, d.score)
            for d in message.detections.detections
        ]
    if timing is not None:
        pred.timing = {
            "preprocess_us": timing.preprocess_us,
            "queue_us": timing.queue_us,
            "compute_us": timing.compute_us,
            "total_us": timing.total_us,
            "batch_size": timing.batch_size,
        }
    return pred


class Client:
    """A blocking client for one server (or a load-balanced address).

    `target` is a HOST:PORT or a `framewire.connection.Connection`; the other
    keyword arguments are Connection's fields (`token`, `tls_ca`,
    `tls_cert`, `tls_key`, `server_name`, `credentials`, `metadata`,
    `max_message_bytes`, `keepalive_seconds`, `reconnect_backoff`,
    `channel_options`). A call fails after `retries` retries of UNAVAILABLE,
    waiting `backoff` seconds (doubling, with jitter) before the first; each
    call waits at most `timeout` seconds unless it says otherwise."""

    def __init__(self, target: str | Connection, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.1,
                 **connection_options):
        if retries < 0:
            raise ValueError(f"retries={retries} must not be negative")
        self.connection = as_connection(target, **connection_options)
        self.retry = RetryPolicy(attempts=retries + 1, backoff=backoff)
        self.timeout = timeout
        self.channel = self.connection.channel()
        self.stub = inference_pb2_grpc.ModelInferenceStub(self.channel)

    @property
    def target(self) -> str:
        return self.connection.target

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request, timeout: float | None):
        self.connection.check_size(request)
        metadata = self.connection.call_metadata
        try:
            return self.retry.run(lambda: method(request, timeout=timeout or self.timeout, metadata=metadata))
        except grpc.RpcError as exc:
            raise self.connection.error(exc) from None

    def predict(self, image, *, model: str, version: int = 0, top_k: int = DEFAULT_TOP_K, return_raw: bool = False,
                score_threshold: float | None = None, max_detections: int = 0,
                timeout: float | None = None) -> Prediction:
        """One image through `model` (its newest READY version unless `version`)."""
        request = pb.PredictRequest(
            model=model, version=version, image=image_message(image),
            options=predict_options(top_k, score_threshold, max_detections, return_raw),
        )
        response = self._call(self.stub.Predict, request, timeout)
        return prediction_from(response.prediction, response.served_by, response.timing)

    def batch_predict(self, images: Iterable, *, model: str, version: int = 0, top_k: int = DEFAULT_TOP_K,
                      return_raw: bool = False, score_threshold: float | None = None,
                      max_detections: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Many images in one request; answers in order."""
        request = pb.BatchPredictRequest(
            model=model, version=version, images=[image_message(i) for i in images],
            options=predict_options(top_k, score_threshold, max_detections, return_raw),
        )
        response = self._call(self.stub.BatchPredict, request, timeout)
        return [prediction_from(p, response.served_by, response.timing) for p in response.predictions]

    def stream(self, frames: Iterable, *, model: str, **options) -> Iterator:
        """Send `frames` (images, or (frame_number, image) pairs with
        increasing numbers) on one stream; yield a `FrameResult` per frame,
        in frame order, as the answers come.

        This is `CameraStream(...).send_all(frames)` on this client's
        connection, with `drop="none"` (every frame is sent and answered; at
        most `max_in_flight`, default 8, wait at the server at once) and the
        stream reopened after a break as often in a row as this client
        retries a call. `options`
        are CameraStream's (`version`, `stream_id`, `top_k`, `max_age_ms`,
        `drop`, ...). Raises `framewire.stream.StreamClosedError` (a
        FramewireError) after the last result when the stream ended for good."""
        from framewire.stream import CameraStream

        options.setdefault("drop", "none")
        options.setdefault("max_in_flight", 8)
        options.setdefault("reconnect", self.retry.attempts - 1)
        options.setdefault("backoff", self.retry.backoff)
        return CameraStream(self.connection, model=model, **options).send_all(frames)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)

    def get_model(self, model: str, version: int = 0, *, include_labels: bool = False,
                  timeout: float | None = None) -> pb.GetModelResponse:
        request = pb.GetModelRequest(model=model, version=version, include_labels=include_labels)
        return self._call(self.stub.GetModel, request, timeout)

    def server_status(self, timeout: float | None = None) -> pb.GetServerStatusResponse:
        return self._call(self.stub.GetServerStatus, pb.GetServerStatusRequest(), timeout)
