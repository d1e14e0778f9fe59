"""Every `google.rpc.ErrorInfo.reason` a Cutout service can send: its status and what it means.

The one source of the error reference (`docs/reference/errors.md`, written by `python -m tools.docs`).
`tests/unit/test_reasons.py` scans services/ for every reason raised and compares it with this
registry both ways, statuses included, so a new reason cannot go undocumented.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc import StatusCode


@dataclass(frozen=True)
class Reason:
    reason: str
    # The status a caller of the public API sees first; any others are what an internal
    # service raises before the gateway maps it (e.g. accounts' FAILED_PRECONDITION).
    statuses: tuple[StatusCode, ...]
    meaning: str
    # google.rpc details sent beside the ErrorInfo (BadRequest, QuotaFailure, RetryInfo).
    details: str = ""
    # Only between the services of a cell; the public API never carries it.
    internal: bool = False


_RETRY = "QuotaFailure, RetryInfo"
C = StatusCode

REASONS: tuple[Reason, ...] = (
    # Who is calling
    Reason("API_KEY_MISSING", (C.UNAUTHENTICATED,), "no API key in the `x-api-key` metadata"),
    Reason("API_KEY_INVALID", (C.UNAUTHENTICATED,), "an unknown key (or a key of another region's cell)"),
    Reason("API_KEY_REVOKED", (C.UNAUTHENTICATED,), "a revoked key: refused on the very next call"),
    Reason("API_KEY_NOT_FOUND", (C.NOT_FOUND,), "`RevokeApiKey` with an id that is not a key of this account"),
    Reason("TOO_MANY_KEYS", (C.FAILED_PRECONDITION,), "the account has its maximum of active keys; revoke one"),
    Reason("WRONG_CREDENTIALS", (C.UNAUTHENTICATED,), "wrong e-mail or password"),
    Reason(
        "METADATA_REPEATED",
        (C.INVALID_ARGUMENT,),
        "a credential (`x-api-key`, `x-admin-token`) sent more than once in one call",
    ),
    Reason(
        "CREDENTIALS_MISSING",
        (C.UNAUTHENTICATED,),
        "`CreateApiKey` with neither e-mail and password nor a key and the password",
    ),
    Reason(
        "PASSWORD_REQUIRED",
        (C.UNAUTHENTICATED,),
        "making a key, or revoking another, with a key but no password",
    ),
    Reason(
        "PASSWORD_CHECKS_BUSY",
        (C.RESOURCE_EXHAUSTED,),
        "more than `PASSWORD_QUEUE` sign-ups, logins and password changes in progress",
        _RETRY,
    ),
    Reason(
        "LOGIN_THROTTLED",
        (C.RESOURCE_EXHAUSTED,),
        "more than `LOGIN_FAILURES_FREE` wrong passwords in a row for an account or e-mail (known or not): "
        "2 s, 4 s, 8 s ... up to `LOGIN_BACKOFF_MAX_S`",
        _RETRY,
    ),
    # Sign-up
    Reason(
        "VERIFICATION_FAILED",
        (C.UNAUTHENTICATED,),
        "sign-up code wrong, used or expired, or the password not the one signed up with (never "
        '"e-mail already signed up": sign-up answers the same for every address); `ChangeEmail` with a '
        "wrong or expired code, or to an address taken meanwhile (a taken address is never told apart: "
        "its owner gets a notice)",
    ),
    Reason("MAIL_UNAVAILABLE", (C.UNAVAILABLE,), "the e-mail with the sign-up code could not be handed to the relay"),
    Reason(
        "WRONG_REGION",
        (C.FAILED_PRECONDITION,),
        'sign-up for a region this cell does not serve; the message and `ErrorInfo.metadata["endpoint"]` '
        "name that region's endpoint (`REGION_ENDPOINTS`)",
        "BadRequest (`region`)",
    ),
    Reason("WEAK_PASSWORD", (C.INVALID_ARGUMENT,), "a password that is too easy to guess", "BadRequest (`password`)"),
    Reason(
        "AGE_NOT_CONFIRMED",
        (C.INVALID_ARGUMENT,),
        "sign-up without `age_confirmed` (at least 13)",
        "BadRequest (`age_confirmed`)",
    ),
    # Accounts and their data
    Reason(
        "ACCOUNT_NOT_FOUND", (C.NOT_FOUND,), "an account, or an admin's target, that does not exist (or was erased)"
    ),
    Reason(
        "ACCOUNT_RESTRICTED",
        (C.FAILED_PRECONDITION,),
        "a removal or erase for an account whose processing is restricted (`processing_restricted`)",
    ),
    Reason("ACCOUNT_ERASED", (C.FAILED_PRECONDITION,), "keeping a result for an account being erased"),
    Reason("ERASURE_NOT_FOUND", (C.NOT_FOUND,), "no erasure recorded for this account", internal=True),
    Reason(
        "ERASURE_PENDING",
        (C.UNAVAILABLE,),
        "the erasure started (the account's key is destroyed) but did not finish; it resumes by itself",
        internal=True,
    ),
    # Administration
    Reason(
        "ADMIN_TOKEN_INVALID",
        (C.UNAUTHENTICATED,),
        "admin call without a named admin's token (on the admin listener; the public port answers "
        "`UNIMPLEMENTED` to any admin call)",
    ),
    Reason(
        "ADMIN_THROTTLED",
        (C.RESOURCE_EXHAUSTED,),
        "more than `ADMIN_FAILURES_FREE` wrong admin tokens in a row from an address (2 s, 4 s, ... up to "
        "`ADMIN_BACKOFF_MAX_S`), or an admin's `ADMIN_RATE_PER_S` used up",
        _RETRY,
    ),
    Reason("ADMIN_DISABLED", (C.PERMISSION_DENIED,), "no admins configured (`ADMINS_FILE` unset or empty)"),
    # Credits and idempotency
    Reason(
        "INSUFFICIENT_CREDITS",
        (C.RESOURCE_EXHAUSTED,),
        "not enough credits; `ErrorInfo.metadata` has `required` and `available`, as decimals",
        "QuotaFailure (`credits`)",
    ),
    Reason("IDEMPOTENCY_KEY_REUSED", (C.INVALID_ARGUMENT,), "an idempotency key reused for another request"),
    Reason("IDEMPOTENCY_KEY_IN_USE", (C.ABORTED,), "the idempotency key of a call still in progress", "RetryInfo"),
    Reason(
        "ALREADY_SERVED",
        (C.ALREADY_EXISTS,),
        "the idempotency key was already served and charged, and its `REPLAYS_PER_KEY` free replays are used "
        "(or its kept result was deleted)",
    ),
    Reason(
        "RESERVATION_RELEASED",
        (C.ABORTED, C.FAILED_PRECONDITION),
        "the credits held for the request lapsed (`HOLD_TIMEOUT_S`) before its result was ready: not sent, "
        "not charged (accounts says FAILED_PRECONDITION to the gateway, which answers ABORTED)",
        "RetryInfo",
    ),
    Reason(
        "RESERVATION_COMMITTED",
        (C.FAILED_PRECONDITION,),
        "releasing a reservation that was already committed",
        internal=True,
    ),
    Reason("RESERVATION_NOT_FOUND", (C.NOT_FOUND,), "committing or releasing an unknown reservation", internal=True),
    Reason(
        "ACCOUNT_MISMATCH",
        (C.PERMISSION_DENIED,),
        "`AuthorizeAndReserve` for an account that is not the key's",
        internal=True,
    ),
    # Limits before work (the gateway's admission)
    Reason(
        "TOO_MANY_CALLS_WITHOUT_KEY",
        (C.RESOURCE_EXHAUSTED,),
        "too many calls without a key in flight at this gateway (`CALLS_WITHOUT_KEY`)",
        _RETRY,
    ),
    Reason(
        "SOURCE_RATE_LIMITED",
        (C.RESOURCE_EXHAUSTED,),
        "too many calls without a key from this address (`SOURCE_RATE_PER_S`, `SOURCE_RATE_BURST`)",
        _RETRY,
    ),
    Reason(
        "RATE_LIMITED",
        (C.RESOURCE_EXHAUSTED,),
        "this key's calls per second used up (`KEY_RATE_PER_S`, `KEY_RATE_BURST`)",
        _RETRY,
    ),
    Reason(
        "TOO_MANY_CALLS_IN_FLIGHT",
        (C.RESOURCE_EXHAUSTED,),
        "this key has `CALLS_PER_KEY` calls in flight",
        _RETRY,
    ),
    Reason(
        "OVERLOADED",
        (C.RESOURCE_EXHAUSTED,),
        "the gateway has `WORK_IN_FLIGHT` removals and erasures in flight (all keys), or the account "
        "`WORK_PER_ACCOUNT` of them: load shedding",
        "QuotaFailure, RetryInfo (`OVERLOAD_RETRY_AFTER_S`)",
    ),
    Reason(
        "REQUEST_TOO_SLOW",
        (C.DEADLINE_EXCEEDED,),
        "a unary call whose request did not arrive within `REQUEST_ARRIVAL_S` of its start",
    ),
    Reason(
        "CALLER_NOT_ALLOWED",
        (C.PERMISSION_DENIED,),
        "an internal service called by a cell certificate it does not answer (only the gateway's)",
        internal=True,
    ),
    # Requests
    Reason(
        "INVALID_ARGUMENT",
        (C.INVALID_ARGUMENT,),
        "a field that cannot be used; `BadRequest` names it (`image`, `options.*`, `regions.*`, `page_size`, ...)",
        "BadRequest",
    ),
    Reason(
        "IMAGE_TOO_LARGE",
        (C.INVALID_ARGUMENT,),
        "an input over 25 MP or 50 MiB (up to 50 MiB + 64 KiB; a larger message is refused by gRPC from its "
        'length, with its own "Received message larger than max")',
        "BadRequest (`image`)",
    ),
    Reason(
        "TTL_OVER_PLAN_MAXIMUM",
        (C.INVALID_ARGUMENT,),
        "a `keep_ttl` longer than the plan allows",
        "BadRequest (`options.keep_ttl`)",
    ),
    Reason(
        "DUPLICATE_ITEM_ID",
        (C.INVALID_ARGUMENT,),
        "a stream item whose id is still in flight on the same stream",
    ),
    Reason(
        "EMPTY_MASK",
        (C.INVALID_ARGUMENT,),
        "erase: the mask marks no pixel",
        "BadRequest (`regions.mask`)",
    ),
    Reason(
        "MASK_SIZE_MISMATCH",
        (C.INVALID_ARGUMENT,),
        "erase: the mask is not the picture's size (after EXIF orientation)",
        "BadRequest (`regions.mask`)",
    ),
    Reason(
        "BOX_OUTSIDE_IMAGE",
        (C.INVALID_ARGUMENT,),
        "erase: a box empty or outside the picture",
        "BadRequest (`regions.boxes[i]`)",
    ),
    Reason(
        "NO_INPAINTING_MODEL",
        (C.FAILED_PRECONDITION,),
        "erase with `ERASE_METHOD_MODEL` on a server without an inpainting model",
    ),
    # Fetching a picture from a URL (image_url, background_image_url): refused before any credit
    Reason("URL_INVALID", (C.INVALID_ARGUMENT,), "not a URL, or one without a host", "BadRequest"),
    Reason("URL_SCHEME_REFUSED", (C.INVALID_ARGUMENT,), "only http and https URLs are fetched", "BadRequest"),
    Reason("URL_CREDENTIALS_REFUSED", (C.INVALID_ARGUMENT,), "a URL with a user name or password", "BadRequest"),
    Reason("URL_HOST_NOT_FOUND", (C.INVALID_ARGUMENT,), "the URL's host name does not resolve", "BadRequest"),
    Reason(
        "URL_ADDRESS_REFUSED",
        (C.INVALID_ARGUMENT,),
        "the host resolves to a loopback, private, link-local, multicast, reserved or metadata address "
        "(also after a redirect, and in IPv4-mapped forms) not allowed by `FETCH_ALLOWED_HOSTS`",
        "BadRequest",
    ),
    Reason("URL_TOO_MANY_REDIRECTS", (C.INVALID_ARGUMENT,), "more redirects than `FETCH_MAX_REDIRECTS`", "BadRequest"),
    Reason("URL_TOO_LARGE", (C.INVALID_ARGUMENT,), "a body longer than the image size limit", "BadRequest"),
    Reason("URL_FETCH_TIMEOUT", (C.INVALID_ARGUMENT,), "the fetch took longer than `FETCH_TIMEOUT_S`", "BadRequest"),
    Reason(
        "URL_FETCH_FAILED",
        (C.INVALID_ARGUMENT,),
        "the server could not be reached, answered other than 200, sent nothing, or its certificate did not verify",
        "BadRequest",
    ),
    # Inference
    Reason(
        "INFERENCE_QUEUE_FULL",
        (C.RESOURCE_EXHAUSTED,),
        "the model's batcher has `MAX_QUEUE` tensors waiting",
        "RetryInfo",
    ),
    Reason("MODEL_OVERLOADED", (C.RESOURCE_EXHAUSTED,), "Triton's own queue for the model is full", "RetryInfo"),
    Reason(
        "MODEL_UNAVAILABLE",
        (C.UNAVAILABLE,),
        "Triton down or not answering, or the chosen model not loaded",
    ),
    Reason("MODEL_FAILED", (C.INTERNAL,), "the model server answered with an error of its own"),
    # Keeping results
    Reason("RESULT_NOT_FOUND", (C.NOT_FOUND,), "no such kept result: it never existed, has expired, or was deleted"),
    Reason(
        "RESULT_CORRUPT",
        (C.DATA_LOSS,),
        "a kept result failed its integrity check and is not returned; store it again",
    ),
    Reason(
        "STORAGE_UNAVAILABLE",
        (C.UNAVAILABLE,),
        "keeping a result while the blob store fails (a full disk, S3 unreachable): nothing kept or charged",
        "RetryInfo",
    ),
    # The services behind
    Reason(
        "DEPENDENCY_UNAVAILABLE",
        (C.UNAVAILABLE,),
        "a service behind the one called is down (accounts, inference), or a result's charge could not be "
        "recorded in time (accounts stalled): not sent, not charged",
        "RetryInfo (for the charge)",
    ),
    Reason("DATABASE_UNAVAILABLE", (C.UNAVAILABLE,), "the service's database is down"),
    Reason(
        "DEPENDENCY_FAILED",
        (C.INTERNAL,),
        "a fault of a service behind the one called, passed on without its text",
    ),
    Reason(
        "INTERNAL",
        (C.INTERNAL,),
        'a fault of ours: the message carries an opaque error id (also in `ErrorInfo.metadata["error_id"]`) '
        "that the service's log has beside the exception and the trace id; the exception's text is never sent",
    ),
)

BY_REASON: dict[str, Reason] = {entry.reason: entry for entry in REASONS}
