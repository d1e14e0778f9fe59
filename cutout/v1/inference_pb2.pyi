from cutout.v1 import erase_pb2 as _erase_pb2
from cutout.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentRequest(_message.Message):
    __slots__ = ("image", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    options: _options_pb2.RemoveBackgroundOptions
    def __init__(self, image: _Optional[bytes] = ..., options: _Optional[_Union[_options_pb2.RemoveBackgroundOptions, _Mapping]] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("result", "timings")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    result: _options_pb2.CutoutImage
    timings: _options_pb2.StageTimings
    def __init__(self, result: _Optional[_Union[_options_pb2.CutoutImage, _Mapping]] = ..., timings: _Optional[_Union[_options_pb2.StageTimings, _Mapping]] = ...) -> None: ...

class EraseRequest(_message.Message):
    __slots__ = ("image", "regions")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    regions: _erase_pb2.EraseRegions
    def __init__(self, image: _Optional[bytes] = ..., regions: _Optional[_Union[_erase_pb2.EraseRegions, _Mapping]] = ...) -> None: ...

class EraseResponse(_message.Message):
    __slots__ = ("result", "timings", "regions")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    result: _options_pb2.CutoutImage
    timings: _options_pb2.StageTimings
    regions: _containers.RepeatedCompositeFieldContainer[_erase_pb2.ErasedRegion]
    def __init__(self, result: _Optional[_Union[_options_pb2.CutoutImage, _Mapping]] = ..., timings: _Optional[_Union[_options_pb2.StageTimings, _Mapping]] = ..., regions: _Optional[_Iterable[_Union[_erase_pb2.ErasedRegion, _Mapping]]] = ...) -> None: ...

class InferenceListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InferenceListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_options_pb2.Model]
    def __init__(self, models: _Optional[_Iterable[_Union[_options_pb2.Model, _Mapping]]] = ...) -> None: ...
