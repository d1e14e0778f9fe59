"""Request bodies read into memory, bounded, and parsed without touching a disk.

Starlette's own `Request.form()` spools uploads past 1 MiB to temporary files; images are
written nowhere (DESIGN.md), so multipart is parsed here with python-multipart's streaming
parser straight into byte strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over the limit of {limit / 2**20:.0f} MiB")
        self.limit = limit


class BadBody(Exception):
    """A body that cannot be parsed as its Content-Type says (the message says why)."""


@dataclass
class Fields:
    """What a form, a multipart body or a JSON object carried: text fields and files."""

    text: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadBody("Content-Length is not a number") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused from its Content-Length before any byte is read, and counted
    while it streams (a chunked body, or one longer than it said)."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise BodyTooLarge(limit)
    parts: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise BodyTooLarge(limit)
            parts.append(chunk)
    except ClientDisconnect:
        raise BadBody("the client went away before the body was complete") from None
    return b"".join(parts)


def parse(content_type: str, body: bytes) -> Fields:
    """A multipart, urlencoded or JSON body as fields (remove.bg accepts all three)."""
    kind, params = parse_options_header(content_type or "")
    if kind == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadBody("multipart/form-data without a boundary")
        return _multipart(body, boundary)
    if kind == b"application/x-www-form-urlencoded":
        try:
            return Fields(text=dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)))
        except UnicodeDecodeError:
            raise BadBody("the form is not UTF-8") from None
    if kind == b"application/json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadBody("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadBody("the JSON body must be an object")
        # JSON booleans and numbers as remove.bg's form values ("true", "30").
        return Fields(text={str(k): _as_text(v) for k, v in data.items() if v is not None})
    raise BadBody("the Content-Type must be multipart/form-data, application/x-www-form-urlencoded or application/json")


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise BadBody("JSON fields must be strings, numbers or booleans")


def _multipart(body: bytes, boundary: bytes) -> Fields:
    fields = Fields()
    headers: dict[bytes, bytes] = {}
    name = b""
    value = b""
    data: list[bytes] = []
    current: dict[str, object] = {"filename": None, "name": b""}

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        nonlocal name
        name += chunk[start:end]

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        nonlocal value
        value += chunk[start:end]

    def on_header_end() -> None:
        nonlocal name, value
        headers[name.lower()] = value
        name, value = b"", b""

    def on_headers_finished() -> None:
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise BadBody("a multipart part without a form-data name")
        current["name"] = params[b"name"]
        current["filename"] = params.get(b"filename")

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.append(chunk[start:end])

    def on_part_end() -> None:
        key = bytes(current["name"]).decode("utf-8", "replace")  # type: ignore[arg-type]
        content = b"".join(data)
        if current["filename"] is not None:
            fields.files[key] = content
        else:
            try:
                fields.text[key] = content.decode("utf-8")
            except UnicodeDecodeError:
                raise BadBody(f"the form field {key!r} is not UTF-8 text") from None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except BadBody:
        raise
    except Exception as error:  # python-multipart's MultipartParseError and kin
        raise BadBody(f"the multipart body could not be parsed ({type(error).__name__})") from None
    return fields
