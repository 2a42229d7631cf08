"""A light framewire client: grpcio, protobuf, numpy and pillow; never torch.

    from framewire.client import Client

    with Client("localhost:8500") as client:
        prediction = client.predict("cat.jpg", model="efficientnet_lite0")
        print(prediction.top.label, prediction.top.score)

Images may be file paths (sent encoded, decoded by the server), encoded
bytes, PIL images or numpy arrays (uint8 HWC RGB of any size, or float32
CHW already preprocessed). Calls retry UNAVAILABLE answers (a full queue, a
restarting server) with exponential backoff.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import grpc
import numpy as np

from framewire.results import ClassScore, Detection
from framewire.v1 import artifact_pb2 as apb
from framewire.v1 import inference_pb2 as pb
from framewire.v1 import inference_pb2_grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class FramewireError(Exception):
    """A call failed; `code` is the gRPC status, `message` what the server said."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = ""):
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(f"{code.name}: {message}")


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


@dataclass
class StreamResult:
    """The answer for one stream frame: a prediction, or a status saying why not."""

    stream_id: str
    frame_number: int
    prediction: Prediction | None
    code: grpc.StatusCode
    message: str
    skipped: bool
    capture_time_us: int

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


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


def _options(top_k: int, return_raw: bool, score_threshold: float | None, max_detections: int) -> pb.PredictOptions:
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
    """A blocking client for one server (or a load-balanced address)."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ):
        """`token` is sent as `authorization: Bearer <token>`. Any of `tls_ca`
        (the CA that signed the server's certificate), `tls_cert`/`tls_key`
        (this client's certificate, for mutual TLS) makes the channel TLS;
        `server_name` overrides the name the server's certificate must carry."""
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *channel_options,
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if credentials is None and (tls_ca or tls_cert or tls_key):
            credentials = tls_credentials(tls_ca, tls_cert, tls_key)
        if token:
            metadata = (*metadata, ("authorization", f"Bearer {token}"))
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self.stub = inference_pb2_grpc.ModelInferenceStub(self.channel)
        self.tls = credentials is not None
        self.max_message_bytes = max_message_bytes
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.metadata = tuple(metadata)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request, timeout: float | None):
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise FramewireError(grpc.StatusCode.RESOURCE_EXHAUSTED, oversize_message(size, self.max_message_bytes))
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in RETRYABLE and attempt < self.retries:
                    delay = self.backoff * (2**attempt) * (0.5 + random.random())
                    attempt += 1
                    time.sleep(delay)
                    continue
                raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> FramewireError:
        """A FramewireError saying what to do where gRPC's own words do not."""
        from framewire.connection import transport_hint

        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = transport_hint(self.target, tls=self.tls, details=details)
            details = f"{details}; {hint}" if hint else details
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            details = refused_size_message(details) or details
        trailing = dict(exc.trailing_metadata() or ())
        return FramewireError(code, details, trailing.get("x-request-id", ""))

    def predict(self, image, *, model: str, version: int = 0, top_k: int = 5, return_raw: bool = False,
                score_threshold: float | None = None, max_detections: int = 0,
                timeout: float | None = None) -> Prediction:
        """One image through `model` (its newest READY version unless `version`)."""
        request = pb.PredictRequest(
            model=model, version=version, image=image_message(image),
            options=_options(top_k, return_raw, score_threshold, max_detections),
        )
        response = self._call(self.stub.Predict, request, timeout)
        return prediction_from(response.prediction, response.served_by, response.timing)

    def batch_predict(self, images: Iterable, *, model: str, version: int = 0, top_k: int = 5,
                      return_raw: bool = False, score_threshold: float | None = None,
                      max_detections: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Many images in one request; answers in order."""
        request = pb.BatchPredictRequest(
            model=model, version=version, images=[image_message(i) for i in images],
            options=_options(top_k, return_raw, score_threshold, max_detections),
        )
        response = self._call(self.stub.BatchPredict, request, timeout)
        return [prediction_from(p, response.served_by, response.timing) for p in response.predictions]

    def stream(self, frames: Iterable, *, model: str, version: int = 0, stream_id: str = "camera-0",
               top_k: int = 5, max_age_ms: int = 0, timeout: float | None = None) -> Iterator[StreamResult]:
        """Send frames (images, or (frame_number, image) pairs) on one stream;
        yield an answer per frame, in frame order."""

        def requests():
            for i, frame in enumerate(frames):
                number, image = frame if isinstance(frame, tuple) else (i, frame)
                message = pb.StreamFrame(
                    stream_id=stream_id, frame_number=number, image=image_message(image),
                    max_age_ms=max_age_ms, capture_time_us=int(time.time() * 1e6),
                )
                if i == 0:
                    message.model, message.version = model, version
                    message.options.CopyFrom(_options(top_k, False, None, 0))
                yield message

        try:
            for result in self.stub.StreamPredict(requests(), timeout=timeout, metadata=self.metadata):
                yield stream_result(result)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)

    def get_model(self, model: str, version: int = 0, *, include_labels: bool = False,
                  timeout: float | None = None) -> pb.GetModelResponse:
        request = pb.GetModelRequest(model=model, version=version, include_labels=include_labels)
        return self._call(self.stub.GetModel, request, timeout)

    def server_status(self, timeout: float | None = None) -> pb.GetServerStatusResponse:
        return self._call(self.stub.GetServerStatus, pb.GetServerStatusRequest(), timeout)


def oversize_message(size: int, limit: int) -> str:
    """Why a request of `size` bytes is not sent, and the settings that matter."""
    return (f"the request is {size:,} bytes, over this client's message limit of {limit:,} "
            f"(Client(max_message_bytes=...), framewire predict --max-message-bytes); the server has its own "
            f"(framewire serve --max-message-bytes, default 64 MiB) and refuses encoded images over its "
            f"--max-image-bytes (default 32 MiB): resize or re-encode the image, or raise the limits on both sides")


def refused_size_message(details: str) -> str | None:
    """gRPC's `Received message larger than max (N vs. M)` from the server,
    said with the setting that raises the limit; None for other messages."""
    import re

    match = re.search(r"Received message larger than max \((\d+) vs\. (\d+)\)", details)
    if match is None or "CLIENT" in details:
        return None
    size, limit = int(match.group(1)), int(match.group(2))
    return (f"the request is {size:,} bytes, over the server's message limit of {limit:,} (its "
            f"--max-message-bytes): resize or re-encode the image, or raise the limit on the server")


def tls_credentials(ca=None, cert=None, key=None) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files (`ca` None: the system's roots)."""
    if bool(cert) != bool(key):
        raise ValueError("a client certificate and its key go together (--tls-cert and --tls-key)")
    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))


def stream_result(result: pb.StreamResult) -> StreamResult:
    code = next((c for c in grpc.StatusCode if c.value[0] == result.status.code), grpc.StatusCode.UNKNOWN)
    prediction = (
        prediction_from(result.prediction, result.served_by, result.timing)
        if result.HasField("prediction") else None
    )
    return StreamResult(result.stream_id, result.frame_number, prediction, code, result.status.message,
                        result.skipped, result.capture_time_us)
