import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from cutout.v1 import account_pb2 as _account_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportAccountRequest(_message.Message):
    __slots__ = ("include_results",)
    INCLUDE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    include_results: bool
    def __init__(self, include_results: _Optional[bool] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ChangeEmailRequest(_message.Message):
    __slots__ = ("new_email", "password", "code")
    NEW_EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    new_email: str
    password: str
    code: str
    def __init__(self, new_email: _Optional[str] = ..., password: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class DeleteAccountRequest(_message.Message):
    __slots__ = ("password",)
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    password: str
    def __init__(self, password: _Optional[str] = ...) -> None: ...

class DeleteAccountResponse(_message.Message):
    __slots__ = ("erasure_id", "state")
    ERASURE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    erasure_id: str
    state: str
    def __init__(self, erasure_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class AdminDeleteAccountRequest(_message.Message):
    __slots__ = ("account_id", "reason")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reason: str
    def __init__(self, account_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class OwnerAccessLogRequest(_message.Message):
    __slots__ = ("limit", "page_size", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_size: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AccessRecord(_message.Message):
    __slots__ = ("at", "actor", "action", "service", "result_id")
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    actor: str
    action: str
    service: str
    result_id: str
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., service: _Optional[str] = ..., result_id: _Optional[str] = ...) -> None: ...

class OwnerAccessLogResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AccessRecord]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AccessRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AccountExport(_message.Message):
    __slots__ = ("profile", "age_confirmed", "keys", "ledger", "balance", "access_log")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    AGE_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_LOG_FIELD_NUMBER: _ClassVar[int]
    profile: _account_pb2.Profile
    age_confirmed: bool
    keys: _containers.RepeatedCompositeFieldContainer[_account_pb2.ApiKey]
    ledger: _containers.RepeatedCompositeFieldContainer[_account_pb2.LedgerEntry]
    balance: _account_pb2.Balance
    access_log: _containers.RepeatedCompositeFieldContainer[AccessRecord]
    def __init__(self, profile: _Optional[_Union[_account_pb2.Profile, _Mapping]] = ..., age_confirmed: _Optional[bool] = ..., keys: _Optional[_Iterable[_Union[_account_pb2.ApiKey, _Mapping]]] = ..., ledger: _Optional[_Iterable[_Union[_account_pb2.LedgerEntry, _Mapping]]] = ..., balance: _Optional[_Union[_account_pb2.Balance, _Mapping]] = ..., access_log: _Optional[_Iterable[_Union[AccessRecord, _Mapping]]] = ...) -> None: ...

class AccountExportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
