from framewire.v1 import artifact_pb2 as _artifact_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_UNAVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_DRAINING: _ClassVar[ModelState]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_UNAVAILABLE: ModelState
MODEL_STATE_DRAINING: ModelState

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: _artifact_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[_artifact_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictOptions(_message.Message):
    __slots__ = ("top_k", "return_raw", "score_threshold", "max_detections")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETURN_RAW_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    return_raw: bool
    score_threshold: float
    max_detections: int
    def __init__(self, top_k: _Optional[int] = ..., return_raw: bool = ..., score_threshold: _Optional[float] = ..., max_detections: _Optional[int] = ...) -> None: ...

class ServedBy(_message.Message):
    __slots__ = ("model", "version", "device")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    device: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("preprocess_us", "queue_us", "compute_us", "total_us", "batch_size")
    PREPROCESS_US_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    preprocess_us: int
    queue_us: int
    compute_us: int
    total_us: int
    batch_size: int
    def __init__(self, preprocess_us: _Optional[int] = ..., queue_us: _Optional[int] = ..., compute_us: _Optional[int] = ..., total_us: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "label", "score", "logit")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    score: float
    logit: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., logit: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("classes",)
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassScore]
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "label_index", "label", "score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    box: Box
    label_index: int
    label: str
    score: float
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., label_index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Detections(_message.Message):
    __slots__ = ("detections",)
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("classification", "embedding", "detections", "raw_outputs", "image_width", "image_height")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    embedding: Embedding
    detections: Detections
    raw_outputs: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    image_width: int
    image_height: int
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., detections: _Optional[_Union[Detections, _Mapping]] = ..., raw_outputs: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "image", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    image: Image
    options: PredictOptions
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("served_by", "prediction", "timing")
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    served_by: ServedBy
    prediction: Prediction
    timing: Timing
    def __init__(self, served_by: _Optional[_Union[ServedBy, _Mapping]] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class BatchPredictRequest(_message.Message):
    __slots__ = ("model", "version", "images", "options")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    options: PredictOptions
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ...) -> None: ...

class BatchPredictResponse(_message.Message):
    __slots__ = ("served_by", "predictions", "timing")
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    served_by: ServedBy
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    timing: Timing
    def __init__(self, served_by: _Optional[_Union[ServedBy, _Mapping]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class StreamFrame(_message.Message):
    __slots__ = ("stream_id", "frame_number", "image", "model", "version", "options", "max_age_ms", "capture_time_us")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frame_number: int
    image: Image
    model: str
    version: int
    options: PredictOptions
    max_age_ms: int
    capture_time_us: int
    def __init__(self, stream_id: _Optional[str] = ..., frame_number: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ..., max_age_ms: _Optional[int] = ..., capture_time_us: _Optional[int] = ...) -> None: ...

class FrameStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StreamResult(_message.Message):
    __slots__ = ("stream_id", "frame_number", "served_by", "prediction", "timing", "status", "skipped", "capture_time_us")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frame_number: int
    served_by: ServedBy
    prediction: Prediction
    timing: Timing
    status: FrameStatus
    skipped: bool
    capture_time_us: int
    def __init__(self, stream_id: _Optional[str] = ..., frame_number: _Optional[int] = ..., served_by: _Optional[_Union[ServedBy, _Mapping]] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., status: _Optional[_Union[FrameStatus, _Mapping]] = ..., skipped: bool = ..., capture_time_us: _Optional[int] = ...) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("version", "state", "reason", "device")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: ModelState
    reason: str
    device: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., reason: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "task", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version", "include_labels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    include_labels: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., include_labels: bool = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("name", "version", "task", "input", "preprocessing", "outputs", "label_count", "labels", "architecture", "parameter_count", "max_batch_size", "versions", "serving_dtype", "weights_sha256", "program_sha256", "signing_key_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SERVING_DTYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    task: str
    input: _artifact_pb2.InputSpec
    preprocessing: _artifact_pb2.Preprocessing
    outputs: _containers.RepeatedCompositeFieldContainer[_artifact_pb2.TensorSpec]
    label_count: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    architecture: str
    parameter_count: int
    max_batch_size: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    serving_dtype: str
    weights_sha256: str
    program_sha256: str
    signing_key_id: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., task: _Optional[str] = ..., input: _Optional[_Union[_artifact_pb2.InputSpec, _Mapping]] = ..., preprocessing: _Optional[_Union[_artifact_pb2.Preprocessing, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[_artifact_pb2.TensorSpec, _Mapping]]] = ..., label_count: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., architecture: _Optional[str] = ..., parameter_count: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., serving_dtype: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., program_sha256: _Optional[str] = ..., signing_key_id: _Optional[str] = ...) -> None: ...

class GetServerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("name", "description", "memory_total_bytes", "memory_allocated_bytes", "sampled", "utilization_percent", "memory_used_bytes", "process_memory_bytes", "power_watts", "power_limit_watts", "temperature_celsius", "sm_clock_mhz", "uuid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROCESS_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_WATTS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_WATTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    memory_total_bytes: int
    memory_allocated_bytes: int
    sampled: bool
    utilization_percent: float
    memory_used_bytes: int
    process_memory_bytes: int
    power_watts: float
    power_limit_watts: float
    temperature_celsius: float
    sm_clock_mhz: float
    uuid: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_allocated_bytes: _Optional[int] = ..., sampled: bool = ..., utilization_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., process_memory_bytes: _Optional[int] = ..., power_watts: _Optional[float] = ..., power_limit_watts: _Optional[float] = ..., temperature_celsius: _Optional[float] = ..., sm_clock_mhz: _Optional[float] = ..., uuid: _Optional[str] = ...) -> None: ...

class ModelRuntimeStatus(_message.Message):
    __slots__ = ("model", "version", "state", "device", "queue_depth", "inference_count", "execution_count", "request_success_count", "request_failure_count", "max_batch_size_seen", "requests_per_second", "images_per_second", "errors_per_second", "latency_p50_ms", "latency_p99_ms", "average_batch_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_SEEN_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ERRORS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    state: ModelState
    device: str
    queue_depth: int
    inference_count: int
    execution_count: int
    request_success_count: int
    request_failure_count: int
    max_batch_size_seen: int
    requests_per_second: float
    images_per_second: float
    errors_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    average_batch_size: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., device: _Optional[str] = ..., queue_depth: _Optional[int] = ..., inference_count: _Optional[int] = ..., execution_count: _Optional[int] = ..., request_success_count: _Optional[int] = ..., request_failure_count: _Optional[int] = ..., max_batch_size_seen: _Optional[int] = ..., requests_per_second: _Optional[float] = ..., images_per_second: _Optional[float] = ..., errors_per_second: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., average_batch_size: _Optional[float] = ...) -> None: ...

class GetServerStatusResponse(_message.Message):
    __slots__ = ("server_version", "devices", "models", "device_fallback_reason", "uptime_seconds", "serving", "metrics_port", "status_json")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceStatus]
    models: _containers.RepeatedCompositeFieldContainer[ModelRuntimeStatus]
    device_fallback_reason: str
    uptime_seconds: float
    serving: bool
    metrics_port: int
    status_json: str
    def __init__(self, server_version: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceStatus, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelRuntimeStatus, _Mapping]]] = ..., device_fallback_reason: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., serving: bool = ..., metrics_port: _Optional[int] = ..., status_json: _Optional[str] = ...) -> None: ...
