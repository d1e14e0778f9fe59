import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from cutout.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StoreHeader(_message.Message):
    __slots__ = ("account_id", "plan", "media_type", "width", "height", "ttl", "result_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    plan: str
    media_type: str
    width: int
    height: int
    ttl: _duration_pb2.Duration
    result_id: str
    def __init__(self, account_id: _Optional[str] = ..., plan: _Optional[str] = ..., media_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., result_id: _Optional[str] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: StoreHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[StoreHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StoreResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _options_pb2.KeptResult
    def __init__(self, result: _Optional[_Union[_options_pb2.KeptResult, _Mapping]] = ...) -> None: ...

class FetchByTokenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class FetchByTokenResponse(_message.Message):
    __slots__ = ("result", "data")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    result: _options_pb2.KeptResult
    data: bytes
    def __init__(self, result: _Optional[_Union[_options_pb2.KeptResult, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FetchOwnedRequest(_message.Message):
    __slots__ = ("account_id", "result_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    result_id: str
    def __init__(self, account_id: _Optional[str] = ..., result_id: _Optional[str] = ...) -> None: ...

class FetchOwnedResponse(_message.Message):
    __slots__ = ("result", "data")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    result: _options_pb2.KeptResult
    data: bytes
    def __init__(self, result: _Optional[_Union[_options_pb2.KeptResult, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListOwnedRequest(_message.Message):
    __slots__ = ("account_id", "limit", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    limit: int
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOwnedResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_options_pb2.KeptResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[_options_pb2.KeptResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteOwnedRequest(_message.Message):
    __slots__ = ("account_id", "result_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    result_id: str
    def __init__(self, account_id: _Optional[str] = ..., result_id: _Optional[str] = ...) -> None: ...

class DeleteOwnedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EraseAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class EraseAccountResponse(_message.Message):
    __slots__ = ("results_erased",)
    RESULTS_ERASED_FIELD_NUMBER: _ClassVar[int]
    results_erased: int
    def __init__(self, results_erased: _Optional[int] = ...) -> None: ...

class ListAccessLogRequest(_message.Message):
    __slots__ = ("account_id", "limit", "before_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    limit: int
    before_id: int
    def __init__(self, account_id: _Optional[str] = ..., limit: _Optional[int] = ..., before_id: _Optional[int] = ...) -> None: ...

class AccessLogEntry(_message.Message):
    __slots__ = ("at", "actor", "action", "result_id", "id")
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    actor: str
    action: str
    result_id: str
    id: int
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., result_id: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class ListAccessLogResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AccessLogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AccessLogEntry, _Mapping]]] = ...) -> None: ...
