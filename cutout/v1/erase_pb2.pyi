from cutout.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EraseMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERASE_METHOD_AUTO: _ClassVar[EraseMethod]
    ERASE_METHOD_TELEA: _ClassVar[EraseMethod]
    ERASE_METHOD_NAVIER_STOKES: _ClassVar[EraseMethod]
    ERASE_METHOD_PATCH: _ClassVar[EraseMethod]
    ERASE_METHOD_MODEL: _ClassVar[EraseMethod]

class EraseFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERASE_FORMAT_UNSPECIFIED: _ClassVar[EraseFormat]
    ERASE_FORMAT_PNG: _ClassVar[EraseFormat]
    ERASE_FORMAT_JPEG: _ClassVar[EraseFormat]
    ERASE_FORMAT_WEBP: _ClassVar[EraseFormat]
ERASE_METHOD_AUTO: EraseMethod
ERASE_METHOD_TELEA: EraseMethod
ERASE_METHOD_NAVIER_STOKES: EraseMethod
ERASE_METHOD_PATCH: EraseMethod
ERASE_METHOD_MODEL: EraseMethod
ERASE_FORMAT_UNSPECIFIED: EraseFormat
ERASE_FORMAT_PNG: EraseFormat
ERASE_FORMAT_JPEG: EraseFormat
ERASE_FORMAT_WEBP: EraseFormat

class Box(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class EraseOptions(_message.Message):
    __slots__ = ("method", "format", "quality")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    method: EraseMethod
    format: EraseFormat
    quality: int
    def __init__(self, method: _Optional[_Union[EraseMethod, str]] = ..., format: _Optional[_Union[EraseFormat, str]] = ..., quality: _Optional[int] = ...) -> None: ...

class EraseRegions(_message.Message):
    __slots__ = ("mask", "boxes", "options")
    MASK_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    mask: bytes
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    options: EraseOptions
    def __init__(self, mask: _Optional[bytes] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., options: _Optional[_Union[EraseOptions, _Mapping]] = ...) -> None: ...

class EraseRegionsRequest(_message.Message):
    __slots__ = ("image", "regions", "idempotency_key")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    regions: EraseRegions
    idempotency_key: str
    def __init__(self, image: _Optional[bytes] = ..., regions: _Optional[_Union[EraseRegions, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ErasedRegion(_message.Message):
    __slots__ = ("bounds", "pixels", "method")
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    bounds: Box
    pixels: int
    method: EraseMethod
    def __init__(self, bounds: _Optional[_Union[Box, _Mapping]] = ..., pixels: _Optional[int] = ..., method: _Optional[_Union[EraseMethod, str]] = ...) -> None: ...

class EraseRegionsResponse(_message.Message):
    __slots__ = ("result", "timings", "regions", "idempotent_replay")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_REPLAY_FIELD_NUMBER: _ClassVar[int]
    result: _options_pb2.CutoutImage
    timings: _options_pb2.StageTimings
    regions: _containers.RepeatedCompositeFieldContainer[ErasedRegion]
    idempotent_replay: bool
    def __init__(self, result: _Optional[_Union[_options_pb2.CutoutImage, _Mapping]] = ..., timings: _Optional[_Union[_options_pb2.StageTimings, _Mapping]] = ..., regions: _Optional[_Iterable[_Union[ErasedRegion, _Mapping]]] = ..., idempotent_replay: _Optional[bool] = ...) -> None: ...
