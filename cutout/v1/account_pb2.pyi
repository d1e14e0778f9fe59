import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignUpRequest(_message.Message):
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

class SignUpResponse(_message.Message):
    __slots__ = ("profile", "balance", "verification_required", "free_credits", "free_credits_note", "free_credits_decimal")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    FREE_CREDITS_FIELD_NUMBER: _ClassVar[int]
    FREE_CREDITS_NOTE_FIELD_NUMBER: _ClassVar[int]
    FREE_CREDITS_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    balance: Balance
    verification_required: bool
    free_credits: int
    free_credits_note: str
    free_credits_decimal: str
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., verification_required: _Optional[bool] = ..., free_credits: _Optional[int] = ..., free_credits_note: _Optional[str] = ..., free_credits_decimal: _Optional[str] = ...) -> None: ...

class VerifySignUpRequest(_message.Message):
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

class VerifySignUpResponse(_message.Message):
    __slots__ = ("profile", "balance", "api_key", "key")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    balance: Balance
    api_key: str
    key: ApiKey
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., api_key: _Optional[str] = ..., key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("email", "password", "name")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    name: str
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "key")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    key: ApiKey
    def __init__(self, api_key: _Optional[str] = ..., key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    prefix: str
    created_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., prefix: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("id", "password")
    ID_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    id: str
    password: str
    def __init__(self, id: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Balance(_message.Message):
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

class ListLedgerRequest(_message.Message):
    __slots__ = ("limit", "page_size", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_size: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("id", "kind", "amount", "held", "reservation_id", "grant_id", "idempotency_key", "created_at", "amount_decimal", "held_decimal")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    HELD_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    amount: int
    held: int
    reservation_id: str
    grant_id: str
    idempotency_key: str
    created_at: _timestamp_pb2.Timestamp
    amount_decimal: str
    held_decimal: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., amount: _Optional[int] = ..., held: _Optional[int] = ..., reservation_id: _Optional[str] = ..., grant_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., amount_decimal: _Optional[str] = ..., held_decimal: _Optional[str] = ...) -> None: ...

class ListLedgerResponse(_message.Message):
    __slots__ = ("entries", "balance", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    balance: Balance
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Profile(_message.Message):
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

class UpdateProfileRequest(_message.Message):
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

class ChangePasswordRequest(_message.Message):
    __slots__ = ("current_password", "new_password")
    CURRENT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    current_password: str
    new_password: str
    def __init__(self, current_password: _Optional[str] = ..., new_password: _Optional[str] = ...) -> None: ...

class ChangePasswordResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GrantCreditsRequest(_message.Message):
    __slots__ = ("account_id", "amount", "amount_decimal", "source", "expires_in_days")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_DAYS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    amount_decimal: str
    source: str
    expires_in_days: int
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., amount_decimal: _Optional[str] = ..., source: _Optional[str] = ..., expires_in_days: _Optional[int] = ...) -> None: ...

class GrantCreditsResponse(_message.Message):
    __slots__ = ("grant_id", "balance")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    balance: Balance
    def __init__(self, grant_id: _Optional[str] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ...) -> None: ...

class LookupAccountRequest(_message.Message):
    __slots__ = ("account_id", "email")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    email: str
    def __init__(self, account_id: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class LookupAccountResponse(_message.Message):
    __slots__ = ("profile", "balance", "active_api_keys")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_API_KEYS_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    balance: Balance
    active_api_keys: int
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., active_api_keys: _Optional[int] = ...) -> None: ...
