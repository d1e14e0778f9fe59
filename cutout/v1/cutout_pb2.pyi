import datetime

from cutout.v1 import account_pb2 as _account_pb2
from cutout.v1 import erase_pb2 as _erase_pb2
from cutout.v1 import options_pb2 as _options_pb2
from cutout.v1 import rights_pb2 as _rights_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RemoveBackgroundRequest(_message.Message):
    __slots__ = ("image", "options", "idempotency_key", "image_url")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    options: _options_pb2.RemoveBackgroundOptions
    idempotency_key: str
    image_url: str
    def __init__(self, image: _Optional[bytes] = ..., options: _Optional[_Union[_options_pb2.RemoveBackgroundOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., image_url: _Optional[str] = ...) -> None: ...

class RemoveBackgroundResponse(_message.Message):
    __slots__ = ("result", "timings", "kept", "credits_charged", "idempotent_replay", "credits_charged_decimal")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    CREDITS_CHARGED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_REPLAY_FIELD_NUMBER: _ClassVar[int]
    CREDITS_CHARGED_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    result: _options_pb2.CutoutImage
    timings: _options_pb2.StageTimings
    kept: _options_pb2.KeptResult
    credits_charged: int
    idempotent_replay: bool
    credits_charged_decimal: str
    def __init__(self, result: _Optional[_Union[_options_pb2.CutoutImage, _Mapping]] = ..., timings: _Optional[_Union[_options_pb2.StageTimings, _Mapping]] = ..., kept: _Optional[_Union[_options_pb2.KeptResult, _Mapping]] = ..., credits_charged: _Optional[int] = ..., idempotent_replay: _Optional[bool] = ..., credits_charged_decimal: _Optional[str] = ...) -> None: ...

class FetchResultRequest(_message.Message):
    __slots__ = ("token", "result_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    result_id: str
    def __init__(self, token: _Optional[str] = ..., result_id: _Optional[str] = ...) -> None: ...

class ListResultsRequest(_message.Message):
    __slots__ = ("limit", "page_size", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_size: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResultsResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_options_pb2.KeptResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[_options_pb2.KeptResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteResultRequest(_message.Message):
    __slots__ = ("result_id",)
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    def __init__(self, result_id: _Optional[str] = ...) -> None: ...

class DeleteResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("defaults", "item")
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    defaults: _options_pb2.RemoveBackgroundOptions
    item: StreamItem
    def __init__(self, defaults: _Optional[_Union[_options_pb2.RemoveBackgroundOptions, _Mapping]] = ..., item: _Optional[_Union[StreamItem, _Mapping]] = ...) -> None: ...

class StreamItem(_message.Message):
    __slots__ = ("id", "image", "options", "idempotency_key", "regions")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    options: _options_pb2.RemoveBackgroundOptions
    idempotency_key: str
    regions: _erase_pb2.EraseRegions
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., options: _Optional[_Union[_options_pb2.RemoveBackgroundOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., regions: _Optional[_Union[_erase_pb2.EraseRegions, _Mapping]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("item", "summary")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    item: StreamItemResult
    summary: StreamSummary
    def __init__(self, item: _Optional[_Union[StreamItemResult, _Mapping]] = ..., summary: _Optional[_Union[StreamSummary, _Mapping]] = ...) -> None: ...

class StreamItemResult(_message.Message):
    __slots__ = ("id", "response", "error", "erased")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    id: str
    response: RemoveBackgroundResponse
    error: _status_pb2.Status
    erased: _erase_pb2.EraseRegionsResponse
    def __init__(self, id: _Optional[str] = ..., response: _Optional[_Union[RemoveBackgroundResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., erased: _Optional[_Union[_erase_pb2.EraseRegionsResponse, _Mapping]] = ...) -> None: ...

class StreamSummary(_message.Message):
    __slots__ = ("items_ok", "items_failed", "credits_charged", "elapsed", "credits_charged_decimal")
    ITEMS_OK_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FAILED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_CHARGED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_CHARGED_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    items_ok: int
    items_failed: int
    credits_charged: int
    elapsed: _duration_pb2.Duration
    credits_charged_decimal: str
    def __init__(self, items_ok: _Optional[int] = ..., items_failed: _Optional[int] = ..., credits_charged: _Optional[int] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., credits_charged_decimal: _Optional[str] = ...) -> None: ...
