import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_PNG: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_WEBP: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_MASK: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_JPEG_ON_COLOR: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_PNG_ON_COLOR: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_AUTO: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_COLOR_ALPHA_PAIR: _ClassVar[OutputFormat]

class Size(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIZE_UNSPECIFIED: _ClassVar[Size]
    SIZE_PREVIEW: _ClassVar[Size]
    SIZE_FULL: _ClassVar[Size]
    SIZE_AUTO: _ClassVar[Size]

class BackgroundFit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKGROUND_FIT_UNSPECIFIED: _ClassVar[BackgroundFit]
    BACKGROUND_FIT_COVER: _ClassVar[BackgroundFit]
    BACKGROUND_FIT_FIT: _ClassVar[BackgroundFit]

class Position(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POSITION_UNSPECIFIED: _ClassVar[Position]
    POSITION_ORIGINAL: _ClassVar[Position]
    POSITION_CENTER: _ClassVar[Position]
    POSITION_PERCENT: _ClassVar[Position]

class Subject(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBJECT_UNSPECIFIED: _ClassVar[Subject]
    SUBJECT_AUTO: _ClassVar[Subject]
    SUBJECT_PERSON: _ClassVar[Subject]
    SUBJECT_ANY: _ClassVar[Subject]

class Detail(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DETAIL_UNSPECIFIED: _ClassVar[Detail]
    DETAIL_FAST: _ClassVar[Detail]
    DETAIL_BALANCED: _ClassVar[Detail]
    DETAIL_FINE: _ClassVar[Detail]
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_PNG: OutputFormat
OUTPUT_FORMAT_WEBP: OutputFormat
OUTPUT_FORMAT_MASK: OutputFormat
OUTPUT_FORMAT_JPEG_ON_COLOR: OutputFormat
OUTPUT_FORMAT_PNG_ON_COLOR: OutputFormat
OUTPUT_FORMAT_AUTO: OutputFormat
OUTPUT_FORMAT_COLOR_ALPHA_PAIR: OutputFormat
SIZE_UNSPECIFIED: Size
SIZE_PREVIEW: Size
SIZE_FULL: Size
SIZE_AUTO: Size
BACKGROUND_FIT_UNSPECIFIED: BackgroundFit
BACKGROUND_FIT_COVER: BackgroundFit
BACKGROUND_FIT_FIT: BackgroundFit
POSITION_UNSPECIFIED: Position
POSITION_ORIGINAL: Position
POSITION_CENTER: Position
POSITION_PERCENT: Position
SUBJECT_UNSPECIFIED: Subject
SUBJECT_AUTO: Subject
SUBJECT_PERSON: Subject
SUBJECT_ANY: Subject
DETAIL_UNSPECIFIED: Detail
DETAIL_FAST: Detail
DETAIL_BALANCED: Detail
DETAIL_FINE: Detail

class Rect(_message.Message):
    __slots__ = ("left", "top", "width", "height")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    width: int
    height: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class RemoveBackgroundOptions(_message.Message):
    __slots__ = ("format", "background_color", "crop_to_subject", "crop_margin_px", "max_width", "max_height", "compression_effort", "quality", "keep_result", "keep_ttl", "subject", "model", "size", "background_image", "background_fit", "blur_background", "scale", "position", "position_x_percent", "position_y_percent", "roi", "crop_margin_percent", "add_shadow", "clean_edges", "background_image_url", "output_size", "detail")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_COLOR_FIELD_NUMBER: _ClassVar[int]
    CROP_TO_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CROP_MARGIN_PX_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_EFFORT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_RESULT_FIELD_NUMBER: _ClassVar[int]
    KEEP_TTL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_IMAGE_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIT_FIELD_NUMBER: _ClassVar[int]
    BLUR_BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    POSITION_X_PERCENT_FIELD_NUMBER: _ClassVar[int]
    POSITION_Y_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ROI_FIELD_NUMBER: _ClassVar[int]
    CROP_MARGIN_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ADD_SHADOW_FIELD_NUMBER: _ClassVar[int]
    CLEAN_EDGES_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    format: OutputFormat
    background_color: str
    crop_to_subject: bool
    crop_margin_px: int
    max_width: int
    max_height: int
    compression_effort: int
    quality: int
    keep_result: bool
    keep_ttl: _duration_pb2.Duration
    subject: Subject
    model: str
    size: Size
    background_image: bytes
    background_fit: BackgroundFit
    blur_background: bool
    scale: int
    position: Position
    position_x_percent: int
    position_y_percent: int
    roi: Rect
    crop_margin_percent: int
    add_shadow: bool
    clean_edges: bool
    background_image_url: str
    output_size: OutputSize
    detail: Detail
    def __init__(self, format: _Optional[_Union[OutputFormat, str]] = ..., background_color: _Optional[str] = ..., crop_to_subject: _Optional[bool] = ..., crop_margin_px: _Optional[int] = ..., max_width: _Optional[int] = ..., max_height: _Optional[int] = ..., compression_effort: _Optional[int] = ..., quality: _Optional[int] = ..., keep_result: _Optional[bool] = ..., keep_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., subject: _Optional[_Union[Subject, str]] = ..., model: _Optional[str] = ..., size: _Optional[_Union[Size, str]] = ..., background_image: _Optional[bytes] = ..., background_fit: _Optional[_Union[BackgroundFit, str]] = ..., blur_background: _Optional[bool] = ..., scale: _Optional[int] = ..., position: _Optional[_Union[Position, str]] = ..., position_x_percent: _Optional[int] = ..., position_y_percent: _Optional[int] = ..., roi: _Optional[_Union[Rect, _Mapping]] = ..., crop_margin_percent: _Optional[int] = ..., add_shadow: _Optional[bool] = ..., clean_edges: _Optional[bool] = ..., background_image_url: _Optional[str] = ..., output_size: _Optional[_Union[OutputSize, _Mapping]] = ..., detail: _Optional[_Union[Detail, str]] = ...) -> None: ...

class OutputSize(_message.Message):
    __slots__ = ("width", "height", "padding", "padding_percent")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    PADDING_PERCENT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    padding: Margins
    padding_percent: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., padding: _Optional[_Union[Margins, _Mapping]] = ..., padding_percent: _Optional[int] = ...) -> None: ...

class Margins(_message.Message):
    __slots__ = ("top", "right", "bottom", "left")
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    top: int
    right: int
    bottom: int
    left: int
    def __init__(self, top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ..., left: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "purpose", "input_width", "input_height", "license", "price_decimal", "served", "default_for")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    PRICE_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    purpose: str
    input_width: int
    input_height: int
    license: str
    price_decimal: str
    served: bool
    default_for: Subject
    def __init__(self, name: _Optional[str] = ..., purpose: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., license: _Optional[str] = ..., price_decimal: _Optional[str] = ..., served: _Optional[bool] = ..., default_for: _Optional[_Union[Subject, str]] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("decode_ms", "preprocess_ms", "batch_wait_ms", "model_ms", "postprocess_ms", "encode_ms", "total_ms", "batch_size")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    preprocess_ms: float
    batch_wait_ms: float
    model_ms: float
    postprocess_ms: float
    encode_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., batch_wait_ms: _Optional[float] = ..., model_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class CutoutImage(_message.Message):
    __slots__ = ("image", "media_type", "width", "height", "foreground_fraction", "model", "foreground_box", "alpha_image", "size", "subject", "confidence")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FOREGROUND_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FOREGROUND_BOX_FIELD_NUMBER: _ClassVar[int]
    ALPHA_IMAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    media_type: str
    width: int
    height: int
    foreground_fraction: float
    model: str
    foreground_box: Rect
    alpha_image: bytes
    size: Size
    subject: Subject
    confidence: float
    def __init__(self, image: _Optional[bytes] = ..., media_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., foreground_fraction: _Optional[float] = ..., model: _Optional[str] = ..., foreground_box: _Optional[_Union[Rect, _Mapping]] = ..., alpha_image: _Optional[bytes] = ..., size: _Optional[_Union[Size, str]] = ..., subject: _Optional[_Union[Subject, str]] = ..., confidence: _Optional[float] = ...) -> None: ...

class KeptResult(_message.Message):
    __slots__ = ("result_id", "token", "created_at", "expires_at", "media_type", "width", "height", "size")
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    token: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    media_type: str
    width: int
    height: int
    size: int
    def __init__(self, result_id: _Optional[str] = ..., token: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., media_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("result", "data")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    result: KeptResult
    data: bytes
    def __init__(self, result: _Optional[_Union[KeptResult, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
