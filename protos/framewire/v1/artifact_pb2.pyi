from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_CLASSIFICATION: _ClassVar[Task]
    TASK_EMBEDDING: _ClassVar[Task]
    TASK_DETECTION: _ClassVar[Task]

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_BFLOAT16: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]

class Layout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYOUT_UNSPECIFIED: _ClassVar[Layout]
    LAYOUT_NCHW: _ClassVar[Layout]

class ColorOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLOR_ORDER_UNSPECIFIED: _ClassVar[ColorOrder]
    COLOR_ORDER_RGB: _ClassVar[ColorOrder]
    COLOR_ORDER_BGR: _ClassVar[ColorOrder]

class Interpolation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_UNSPECIFIED: _ClassVar[Interpolation]
    INTERPOLATION_BILINEAR: _ClassVar[Interpolation]
    INTERPOLATION_BICUBIC: _ClassVar[Interpolation]
    INTERPOLATION_NEAREST: _ClassVar[Interpolation]

class ResizeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESIZE_MODE_NONE: _ClassVar[ResizeMode]
    RESIZE_MODE_SHORTER_SIDE: _ClassVar[ResizeMode]
    RESIZE_MODE_EXACT: _ClassVar[ResizeMode]
TASK_UNSPECIFIED: Task
TASK_CLASSIFICATION: Task
TASK_EMBEDDING: Task
TASK_DETECTION: Task
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_BFLOAT16: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_INT64: DataType
LAYOUT_UNSPECIFIED: Layout
LAYOUT_NCHW: Layout
COLOR_ORDER_UNSPECIFIED: ColorOrder
COLOR_ORDER_RGB: ColorOrder
COLOR_ORDER_BGR: ColorOrder
INTERPOLATION_UNSPECIFIED: Interpolation
INTERPOLATION_BILINEAR: Interpolation
INTERPOLATION_BICUBIC: Interpolation
INTERPOLATION_NEAREST: Interpolation
RESIZE_MODE_NONE: ResizeMode
RESIZE_MODE_SHORTER_SIDE: ResizeMode
RESIZE_MODE_EXACT: ResizeMode

class FormatVersion(_message.Message):
    __slots__ = ("major", "minor")
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    major: int
    minor: int
    def __init__(self, major: _Optional[int] = ..., minor: _Optional[int] = ...) -> None: ...

class Producer(_message.Message):
    __slots__ = ("framewire_version", "torch_version", "torchvision_version")
    FRAMEWIRE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCHVISION_VERSION_FIELD_NUMBER: _ClassVar[int]
    framewire_version: str
    torch_version: str
    torchvision_version: str
    def __init__(self, framewire_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., torchvision_version: _Optional[str] = ...) -> None: ...

class ScalarValue(_message.Message):
    __slots__ = ("int_value", "float_value", "bool_value", "string_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    float_value: float
    bool_value: bool
    string_value: str
    def __init__(self, int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., bool_value: bool = ..., string_value: _Optional[str] = ...) -> None: ...

class RegistryArchitecture(_message.Message):
    __slots__ = ("builder", "kwargs")
    class KwargsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScalarValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScalarValue, _Mapping]] = ...) -> None: ...
    BUILDER_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    builder: str
    kwargs: _containers.MessageMap[str, ScalarValue]
    def __init__(self, builder: _Optional[str] = ..., kwargs: _Optional[_Mapping[str, ScalarValue]] = ...) -> None: ...

class GraphSchemaVersion(_message.Message):
    __slots__ = ("major", "minor")
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    major: int
    minor: int
    def __init__(self, major: _Optional[int] = ..., minor: _Optional[int] = ...) -> None: ...

class GraphProgram(_message.Message):
    __slots__ = ("program_json", "schema_version", "constant_names", "torch_version", "program_sha256")
    PROGRAM_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_NAMES_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_SHA256_FIELD_NUMBER: _ClassVar[int]
    program_json: bytes
    schema_version: GraphSchemaVersion
    constant_names: _containers.RepeatedScalarFieldContainer[str]
    torch_version: str
    program_sha256: bytes
    def __init__(self, program_json: _Optional[bytes] = ..., schema_version: _Optional[_Union[GraphSchemaVersion, _Mapping]] = ..., constant_names: _Optional[_Iterable[str]] = ..., torch_version: _Optional[str] = ..., program_sha256: _Optional[bytes] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("channels", "height", "width", "dtype", "layout", "color_order", "min_batch", "max_batch")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    COLOR_ORDER_FIELD_NUMBER: _ClassVar[int]
    MIN_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    dtype: DataType
    layout: Layout
    color_order: ColorOrder
    min_batch: int
    max_batch: int
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., dtype: _Optional[_Union[DataType, str]] = ..., layout: _Optional[_Union[Layout, str]] = ..., color_order: _Optional[_Union[ColorOrder, str]] = ..., min_batch: _Optional[int] = ..., max_batch: _Optional[int] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("resize_mode", "resize_shorter", "crop_height", "crop_width", "interpolation", "antialias", "scale", "mean", "std")
    RESIZE_MODE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_SHORTER_FIELD_NUMBER: _ClassVar[int]
    CROP_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CROP_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    ANTIALIAS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    resize_mode: ResizeMode
    resize_shorter: int
    crop_height: int
    crop_width: int
    interpolation: Interpolation
    antialias: bool
    scale: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, resize_mode: _Optional[_Union[ResizeMode, str]] = ..., resize_shorter: _Optional[int] = ..., crop_height: _Optional[int] = ..., crop_width: _Optional[int] = ..., interpolation: _Optional[_Union[Interpolation, str]] = ..., antialias: bool = ..., scale: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class OutputSpec(_message.Message):
    __slots__ = ("outputs", "labels")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("algorithm", "key_id", "signature")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    key_id: str
    signature: bytes
    def __init__(self, algorithm: _Optional[str] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ModelArtifact(_message.Message):
    __slots__ = ("format_version", "name", "version", "task", "producer", "created_unix_seconds", "description", "registry", "graph", "input", "preprocessing", "output", "parameter_count", "weights", "weights_sha256", "signature")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    format_version: FormatVersion
    name: str
    version: int
    task: Task
    producer: Producer
    created_unix_seconds: int
    description: str
    registry: RegistryArchitecture
    graph: GraphProgram
    input: InputSpec
    preprocessing: Preprocessing
    output: OutputSpec
    parameter_count: int
    weights: bytes
    weights_sha256: bytes
    signature: Signature
    def __init__(self, format_version: _Optional[_Union[FormatVersion, _Mapping]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., task: _Optional[_Union[Task, str]] = ..., producer: _Optional[_Union[Producer, _Mapping]] = ..., created_unix_seconds: _Optional[int] = ..., description: _Optional[str] = ..., registry: _Optional[_Union[RegistryArchitecture, _Mapping]] = ..., graph: _Optional[_Union[GraphProgram, _Mapping]] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., output: _Optional[_Union[OutputSpec, _Mapping]] = ..., parameter_count: _Optional[int] = ..., weights: _Optional[bytes] = ..., weights_sha256: _Optional[bytes] = ..., signature: _Optional[_Union[Signature, _Mapping]] = ...) -> None: ...
