import datetime

from cutout.v1 import account_pb2 as _account_pb2
from cutout.v1 import rights_pb2 as _rights_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVE_OUTCOME_UNSPECIFIED: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_NEW: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_DUPLICATE_HELD: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_DUPLICATE_COMMITTED: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_DUPLICATE_RELEASED: _ClassVar[ReserveOutcome]
    RESERVE_OUTCOME_REPLAY: _ClassVar[ReserveOutcome]
RESERVE_OUTCOME_UNSPECIFIED: ReserveOutcome
RESERVE_OUTCOME_NEW: ReserveOutcome
RESERVE_OUTCOME_DUPLICATE_HELD: ReserveOutcome
RESERVE_OUTCOME_DUPLICATE_COMMITTED: ReserveOutcome
RESERVE_OUTCOME_DUPLICATE_RELEASED: ReserveOutcome
RESERVE_OUTCOME_REPLAY: ReserveOutcome

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
    __slots__ = ("account_id", "idempotency_key", "amount", "amount_millicredits", "request_hash", "replay")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MILLICREDITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HASH_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    idempotency_key: str
    amount: int
    amount_millicredits: int
    request_hash: str
    replay: bool
    def __init__(self, account_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., amount: _Optional[int] = ..., amount_millicredits: _Optional[int] = ..., request_hash: _Optional[str] = ..., replay: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("reservation_id", "outcome", "kept_result_id", "replays_left")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    KEPT_RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_LEFT_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    outcome: ReserveOutcome
    kept_result_id: str
    replays_left: int
    def __init__(self, reservation_id: _Optional[str] = ..., outcome: _Optional[_Union[ReserveOutcome, str]] = ..., kept_result_id: _Optional[str] = ..., replays_left: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("account_id", "reservation_id", "kept_result_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    KEPT_RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    kept_result_id: str
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., kept_result_id: _Optional[str] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("account_id", "reservation_id", "undelivered")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    undelivered: bool
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., undelivered: _Optional[bool] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class AccountsSignUpRequest(_message.Message):
    __slots__ = ("email", "password", "display_name", "region", "age_confirmed", "marketing_opt_in")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    AGE_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    MARKETING_OPT_IN_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    display_name: str
    region: str
    age_confirmed: bool
    marketing_opt_in: bool
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ..., display_name: _Optional[str] = ..., region: _Optional[str] = ..., age_confirmed: _Optional[bool] = ..., marketing_opt_in: _Optional[bool] = ...) -> None: ...

class AccountsSignUpResponse(_message.Message):
    __slots__ = ("verification_required", "free_credits", "free_credits_note", "free_credits_decimal")
    VERIFICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    FREE_CREDITS_FIELD_NUMBER: _ClassVar[int]
    FREE_CREDITS_NOTE_FIELD_NUMBER: _ClassVar[int]
    FREE_CREDITS_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    verification_required: bool
    free_credits: int
    free_credits_note: str
    free_credits_decimal: str
    def __init__(self, verification_required: _Optional[bool] = ..., free_credits: _Optional[int] = ..., free_credits_note: _Optional[str] = ..., free_credits_decimal: _Optional[str] = ...) -> None: ...

class AccountsVerifySignUpRequest(_message.Message):
    __slots__ = ("email", "password", "code", "key_name")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    code: str
    key_name: str
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ..., code: _Optional[str] = ..., key_name: _Optional[str] = ...) -> None: ...

class AccountsVerifySignUpResponse(_message.Message):
    __slots__ = ("profile", "balance", "api_key", "key")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    profile: _account_pb2.Profile
    balance: _account_pb2.Balance
    api_key: str
    key: _account_pb2.ApiKey
    def __init__(self, profile: _Optional[_Union[_account_pb2.Profile, _Mapping]] = ..., balance: _Optional[_Union[_account_pb2.Balance, _Mapping]] = ..., api_key: _Optional[str] = ..., key: _Optional[_Union[_account_pb2.ApiKey, _Mapping]] = ...) -> None: ...

class AccountsCreateApiKeyRequest(_message.Message):
    __slots__ = ("email", "password", "name")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    name: str
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class AccountsCreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "key")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    key: _account_pb2.ApiKey
    def __init__(self, api_key: _Optional[str] = ..., key: _Optional[_Union[_account_pb2.ApiKey, _Mapping]] = ...) -> None: ...

class AccountsListApiKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AccountsListApiKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[_account_pb2.ApiKey]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[_account_pb2.ApiKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AccountsRevokeApiKeyRequest(_message.Message):
    __slots__ = ("id", "password")
    ID_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    id: str
    password: str
    def __init__(self, id: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class AccountsRevokeApiKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: _account_pb2.ApiKey
    def __init__(self, key: _Optional[_Union[_account_pb2.ApiKey, _Mapping]] = ...) -> None: ...

class AccountsGetBalanceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AccountsGetBalanceResponse(_message.Message):
    __slots__ = ("available", "held", "next_expiry", "expiring_next", "available_decimal", "held_decimal", "expiring_next_decimal")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    NEXT_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_NEXT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    HELD_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_NEXT_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    available: int
    held: int
    next_expiry: _timestamp_pb2.Timestamp
    expiring_next: int
    available_decimal: str
    held_decimal: str
    expiring_next_decimal: str
    def __init__(self, available: _Optional[int] = ..., held: _Optional[int] = ..., next_expiry: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expiring_next: _Optional[int] = ..., available_decimal: _Optional[str] = ..., held_decimal: _Optional[str] = ..., expiring_next_decimal: _Optional[str] = ...) -> None: ...

class AccountsListLedgerRequest(_message.Message):
    __slots__ = ("limit", "page_size", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_size: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AccountsListLedgerResponse(_message.Message):
    __slots__ = ("entries", "balance", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_account_pb2.LedgerEntry]
    balance: _account_pb2.Balance
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[_account_pb2.LedgerEntry, _Mapping]]] = ..., balance: _Optional[_Union[_account_pb2.Balance, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AccountsGetProfileRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AccountsGetProfileResponse(_message.Message):
    __slots__ = ("account_id", "email", "display_name", "region", "plan", "marketing_opt_in", "created_at", "usage_stats_opt_out", "processing_restricted", "email_verification_required")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MARKETING_OPT_IN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    USAGE_STATS_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_RESTRICTED_FIELD_NUMBER: _ClassVar[int]
    EMAIL_VERIFICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    email: str
    display_name: str
    region: str
    plan: str
    marketing_opt_in: bool
    created_at: _timestamp_pb2.Timestamp
    usage_stats_opt_out: bool
    processing_restricted: bool
    email_verification_required: bool
    def __init__(self, account_id: _Optional[str] = ..., email: _Optional[str] = ..., display_name: _Optional[str] = ..., region: _Optional[str] = ..., plan: _Optional[str] = ..., marketing_opt_in: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage_stats_opt_out: _Optional[bool] = ..., processing_restricted: _Optional[bool] = ..., email_verification_required: _Optional[bool] = ...) -> None: ...

class AccountsUpdateProfileRequest(_message.Message):
    __slots__ = ("display_name", "marketing_opt_in", "update_fields", "update_mask", "usage_stats_opt_out", "processing_restricted")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    MARKETING_OPT_IN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    USAGE_STATS_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_RESTRICTED_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    marketing_opt_in: bool
    update_fields: _containers.RepeatedScalarFieldContainer[str]
    update_mask: _field_mask_pb2.FieldMask
    usage_stats_opt_out: bool
    processing_restricted: bool
    def __init__(self, display_name: _Optional[str] = ..., marketing_opt_in: _Optional[bool] = ..., update_fields: _Optional[_Iterable[str]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., usage_stats_opt_out: _Optional[bool] = ..., processing_restricted: _Optional[bool] = ...) -> None: ...

class AccountsUpdateProfileResponse(_message.Message):
    __slots__ = ("account_id", "email", "display_name", "region", "plan", "marketing_opt_in", "created_at", "usage_stats_opt_out", "processing_restricted", "email_verification_required")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MARKETING_OPT_IN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    USAGE_STATS_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_RESTRICTED_FIELD_NUMBER: _ClassVar[int]
    EMAIL_VERIFICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    email: str
    display_name: str
    region: str
    plan: str
    marketing_opt_in: bool
    created_at: _timestamp_pb2.Timestamp
    usage_stats_opt_out: bool
    processing_restricted: bool
    email_verification_required: bool
    def __init__(self, account_id: _Optional[str] = ..., email: _Optional[str] = ..., display_name: _Optional[str] = ..., region: _Optional[str] = ..., plan: _Optional[str] = ..., marketing_opt_in: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage_stats_opt_out: _Optional[bool] = ..., processing_restricted: _Optional[bool] = ..., email_verification_required: _Optional[bool] = ...) -> None: ...

class AccountsChangePasswordRequest(_message.Message):
    __slots__ = ("current_password", "new_password")
    CURRENT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    current_password: str
    new_password: str
    def __init__(self, current_password: _Optional[str] = ..., new_password: _Optional[str] = ...) -> None: ...

class AccountsChangePasswordResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AccountsChangeEmailRequest(_message.Message):
    __slots__ = ("new_email", "password", "code")
    NEW_EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    new_email: str
    password: str
    code: str
    def __init__(self, new_email: _Optional[str] = ..., password: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class AccountsChangeEmailResponse(_message.Message):
    __slots__ = ("account_id", "email", "display_name", "region", "plan", "marketing_opt_in", "created_at", "usage_stats_opt_out", "processing_restricted", "email_verification_required")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MARKETING_OPT_IN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    USAGE_STATS_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_RESTRICTED_FIELD_NUMBER: _ClassVar[int]
    EMAIL_VERIFICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    email: str
    display_name: str
    region: str
    plan: str
    marketing_opt_in: bool
    created_at: _timestamp_pb2.Timestamp
    usage_stats_opt_out: bool
    processing_restricted: bool
    email_verification_required: bool
    def __init__(self, account_id: _Optional[str] = ..., email: _Optional[str] = ..., display_name: _Optional[str] = ..., region: _Optional[str] = ..., plan: _Optional[str] = ..., marketing_opt_in: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage_stats_opt_out: _Optional[bool] = ..., processing_restricted: _Optional[bool] = ..., email_verification_required: _Optional[bool] = ...) -> None: ...

class AccountsDeleteAccountRequest(_message.Message):
    __slots__ = ("password",)
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    password: str
    def __init__(self, password: _Optional[str] = ...) -> None: ...

class AccountsDeleteAccountResponse(_message.Message):
    __slots__ = ("erasure_id", "state")
    ERASURE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    erasure_id: str
    state: str
    def __init__(self, erasure_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class AccountsExportAccountRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AccountsExportAccountResponse(_message.Message):
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
    access_log: _containers.RepeatedCompositeFieldContainer[_rights_pb2.AccessRecord]
    def __init__(self, profile: _Optional[_Union[_account_pb2.Profile, _Mapping]] = ..., age_confirmed: _Optional[bool] = ..., keys: _Optional[_Iterable[_Union[_account_pb2.ApiKey, _Mapping]]] = ..., ledger: _Optional[_Iterable[_Union[_account_pb2.LedgerEntry, _Mapping]]] = ..., balance: _Optional[_Union[_account_pb2.Balance, _Mapping]] = ..., access_log: _Optional[_Iterable[_Union[_rights_pb2.AccessRecord, _Mapping]]] = ...) -> None: ...

class AccountsListAccessLogRequest(_message.Message):
    __slots__ = ("limit", "before_id")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    limit: int
    before_id: int
    def __init__(self, limit: _Optional[int] = ..., before_id: _Optional[int] = ...) -> None: ...

class AccountsListAccessLogResponse(_message.Message):
    __slots__ = ("entries", "entry_ids")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENTRY_IDS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_rights_pb2.AccessRecord]
    entry_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, entries: _Optional[_Iterable[_Union[_rights_pb2.AccessRecord, _Mapping]]] = ..., entry_ids: _Optional[_Iterable[int]] = ...) -> None: ...
