from cutout.v1 import account_pb2 as _account_pb2
from cutout.v1 import rights_pb2 as _rights_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVE_OUTCOME_UNSPECIFIED: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_NEW: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_DUPLICATE_HELD: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_DUPLICATE_COMMITTED: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_DUPLICATE_RELEASED: _ClassVar[ReserveOutcome]
RESERVE_OUTCOME_UNSPECIFIED: ReserveOutcome
RESERVE_OUTCOME_NEW: ReserveOutcome
RESERVE_OUTCOME_DUPLICATE_HELD: ReserveOutcome
RESERVE_OUTCOME_DUPLICATE_COMMITTED: ReserveOutcome
RESERVE_OUTCOME_DUPLICATE_RELEASED: ReserveOutcome

class AuthenticateRequest(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    def __init__(self, api_key: _Optional[str] = ...) -> None: ...

class AuthenticateResponse(_message.Message):
    __slots__ = ("account_id", "region", "plan", "key_id", "processing_restricted", "usage_stats_opt_out")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_RESTRICTED_FIELD_NUMBER: _ClassVar[int]
    USAGE_STATS_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    region: str
    plan: str
    key_id: str
    processing_restricted: bool
    usage_stats_opt_out: bool
    def __init__(self, account_id: _Optional[str] = ..., region: _Optional[str] = ..., plan: _Optional[str] = ..., key_id: _Optional[str] = ..., processing_restricted: _Optional[bool] = ..., usage_stats_opt_out: _Optional[bool] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("account_id", "idempotency_key", "amount", "amount_millicredits", "request_hash")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HASH_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    amount: int
    amount_millicredits: int
    request_hash: str
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., amount: _Optional[int] = ..., amount_millicredits: _Optional[int] = ..., request_hash: _Optional[str] = ...) -> None: ...

class AuthorizeAndReserveRequest(_message.Message):
    __slots__ = ("api_key", "reserve")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    reserve: ReserveRequest
    def __init__(self, api_key: _Optional[str] = ..., reserve: _Optional[_Union[ReserveRequest, _Mapping]] = ...) -> None: ...

class AuthorizeAndReserveResponse(_message.Message):
    __slots__ = ("caller", "reserved")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    caller: AuthenticateResponse
    reserved: ReserveResponse
    def __init__(self, caller: _Optional[_Union[AuthenticateResponse, _Mapping]] = ..., reserved: _Optional[_Union[ReserveResponse, _Mapping]] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("reservation_id", "outcome")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    outcome: ReserveOutcome
    def __init__(self, reservation_id: _Optional[str] = ..., outcome: _Optional[_Union[ReserveOutcome, str]] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ("account_id", "reservation_id", "undelivered")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    undelivered: bool
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., undelivered: _Optional[bool] = ...) -> None: ...

class SettleResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...
