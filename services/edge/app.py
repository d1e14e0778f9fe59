"""The HTTP edge's ASGI app: remove.bg's API v1.0, Cutout's own API as JSON, the model list
and an OpenAPI document, each request translated to one call of the gateway's public gRPC
API with the caller's API key forwarded.

The edge is thin on purpose: authentication, credits (reserve, commit, idempotency),
admission, rate limits, URL fetching and every option check are the gateway's, so there is
one copy of each. What the edge owns is HTTP itself: bounded bodies read into memory (never
spooled to disk), a bound on requests in flight, and the mapping of answers and errors.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cutout.transport import API_KEY_METADATA, channel_credentials, channel_options
from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.tls import is_loopback
from services.edge import body, errors, openapi, removebg
from services.edge.settings import EdgeSettings

log = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"
# remove.bg's X-Type for what Cutout detected.
X_TYPE = {options_pb2.SUBJECT_PERSON: "person"}
# Cutout's unary methods on POST /v1/{method}: those an API key authorises. The keyless ones
# (SignUp, VerifySignUp, CreateApiKey by password) stay on gRPC, where the gateway's
# per-source limits see the caller's own address rather than the edge's.
KEYLESS = {"SignUp", "VerifySignUp"}
# A request refused before its body is read still has a body this small read and dropped.
DRAIN_BYTES = 1024 * 1024


class Gateway:
    """The edge's one channel to the gateway's public port (TLS, trusting the cell's CA)."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.channel: grpc.aio.Channel | None = None

    def open(self) -> None:
        target = self.settings.gateway_target
        options: list[tuple[str, int | str]] = channel_options()
        if self.settings.gateway_tls_name:
            options.append(("grpc.ssl_target_name_override", self.settings.gateway_tls_name))
        if self.settings.gateway_ca_file is None and is_loopback(target) and self.settings.gateway_plaintext:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            credentials = channel_credentials(self.settings.gateway_ca_file)
            self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        self.stub = cutout_pb2_grpc.CutoutStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def call(self, method: str, request: Message, api_key: str) -> Any:
        rpc = getattr(self.stub, method)
        return await rpc(request, metadata=((API_KEY_METADATA, api_key),), timeout=self.settings.gateway_timeout_s)

    async def ready(self) -> bool:
        try:
            answer = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING


class InFlight:
    """Pure ASGI middleware: at most `limit` requests in flight; beyond it a 503 with
    Retry-After before the body is read (this, with the body limit, bounds the memory)."""

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: float) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = str(max(1, round(retry_after_s)))
        self.count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/livez", "/healthz"):
            await self.app(scope, receive, send)
            return
        if self.count >= self.limit:
            refused = errors.HttpError(503, "busy", f"{self.limit} requests are in flight on this edge; retry shortly")
            headers = {"Retry-After": self.retry_after, "Connection": "close"}
            await JSONResponse(refused.removebg_body(), 503, headers)(scope, receive, send)
            return
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


def _refusal(error: errors.HttpError, google: bool = False, *, close: bool = False) -> JSONResponse:
    headers = dict(error.headers)
    if close:  # the body was not read: this connection cannot carry another request
        headers["Connection"] = "close"
    return JSONResponse(error.google_body() if google else error.removebg_body(), error.status, headers)


def _body_error(error: Exception, google: bool = False) -> JSONResponse:
    if isinstance(error, body.BodyTooLarge):
        return _refusal(errors.HttpError(413, "file_too_large", str(error)), google, close=True)
    return _refusal(errors.HttpError(400, "invalid_body", str(error)), google)


def _api_key(request: Request) -> str:
    return request.headers.get(API_KEY_HEADER, "").strip()


async def _no_key(request: Request, google: bool = False) -> JSONResponse:
    refused = errors.HttpError(403, "auth_failed", f"send your API key in the {API_KEY_HEADER} header")
    return await _unread(request, refused, google)


async def _unread(request: Request, refused: errors.HttpError, google: bool = False) -> JSONResponse:
    """A refusal decided before the body is read: a large upload without a key costs nothing
    but its headers (the connection is closed under it). A small body is read and dropped
    first, so that a client still sending it gets the answer instead of a broken connection."""
    try:
        length = body.declared_length(request)
    except body.BadBody:
        length = None
    if length is None or length > DRAIN_BYTES:
        return _refusal(refused, google, close=True)
    try:
        await body.read_body(request, DRAIN_BYTES)
    except (body.BodyTooLarge, body.BadBody):
        return _refusal(refused, google, close=True)
    return _refusal(refused, google)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "image/" not in accept


def _result_headers(response: cutout_pb2.RemoveBackgroundResponse) -> dict[str, str]:
    result = response.result
    box = result.foreground_box
    return {
        "X-Credits-Charged": response.credits_charged_decimal or str(response.credits_charged),
        "X-Type": X_TYPE.get(result.subject, "other"),
        "X-Confidence": f"{result.confidence:.3f}",
        "X-Model": result.model,
        "X-Width": str(result.width),
        "X-Height": str(result.height),
        "X-Foreground-Top": str(box.top),
        "X-Foreground-Left": str(box.left),
        "X-Foreground-Width": str(box.width),
        "X-Foreground-Height": str(box.height),
    }


def _zip(result: options_pb2.CutoutImage) -> bytes:
    """remove.bg's format=zip: the colour as color.jpg and the alpha as alpha.png."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:  # both are compressed already
        archive.writestr("color.jpg", result.image)
        archive.writestr("alpha.png", result.alpha_image)
    return out.getvalue()


def build_app(settings: EdgeSettings, gateway: Gateway | None = None) -> ASGIApp:
    gateway = gateway or Gateway(settings)

    async def removebg_post(request: Request) -> Response:
        api_key = _api_key(request)
        if not api_key:
            return await _no_key(request)
        try:
            raw = await body.read_body(request, settings.max_body_bytes)
            fields = body.parse(request.headers.get("content-type", ""), raw)
            del raw
            translated = removebg.translate(fields, request.headers.get("idempotency-key", ""))
        except (body.BodyTooLarge, body.BadBody) as error:
            return _body_error(error)
        except removebg.Refused as refused:
            return _refusal(errors.HttpError(400, refused.code, refused.detail))
        try:
            answer: cutout_pb2.RemoveBackgroundResponse = await gateway.call(
                "RemoveBackground", translated.request, api_key
            )
        except grpc.aio.AioRpcError as error:
            mapped = errors.from_rpc(error)
            log.info("removebg refused: %s (%s)", mapped.status, mapped.code)
            return _refusal(mapped)
        headers = _result_headers(answer)
        result = answer.result
        image = _zip(result) if translated.zipped else result.image
        media_type = "application/zip" if translated.zipped else result.media_type
        if _wants_json(request):
            box = result.foreground_box
            data = {
                "result_b64": base64.b64encode(image).decode("ascii"),
                "foreground_top": box.top,
                "foreground_left": box.left,
                "foreground_width": box.width,
                "foreground_height": box.height,
            }
            return JSONResponse({"data": data}, headers=headers)
        return Response(image, media_type=media_type, headers=headers)

    async def account_get(request: Request) -> Response:
        api_key = _api_key(request)
        if not api_key:
            return await _no_key(request)
        try:
            balance = await gateway.call("GetBalance", api_key_methods["GetBalance"](), api_key)
        except grpc.aio.AioRpcError as error:
            return _refusal(errors.from_rpc(error))
        total = _number(balance.available_decimal or str(balance.available))
        credits = {"total": total, "subscription": 0, "payg": total, "enterprise": 0}
        # Cutout has no free-call allowance apart from the credits granted at sign-up.
        return JSONResponse({"data": {"attributes": {"credits": credits, "api": {"free_calls": 0, "sizes": "all"}}}})

    async def models_get(request: Request) -> Response:
        return await _json_call(request, "ListModels", b"{}")

    async def cutout_post(request: Request) -> Response:
        method = request.path_params["method"]
        if not api_key_methods.get(method):
            detail = (
                f"{method} is served on gRPC only"
                if method in all_methods
                else f"no method {method} in cutout.v1.Cutout"
            )
            return await _unread(request, errors.HttpError(404, "not_found", detail), True)
        try:
            raw = await body.read_body(request, settings.max_body_bytes) if _api_key(request) else b""
        except (body.BodyTooLarge, body.BadBody) as error:
            return _body_error(error, True)
        return await _json_call(request, method, raw)

    async def _json_call(request: Request, method: str, raw: bytes) -> Response:
        api_key = _api_key(request)
        if not api_key:
            return await _no_key(request, True)
        message = api_key_methods[method]()
        try:
            json_format.Parse(raw or b"{}", message)
        except json_format.ParseError as error:
            return _refusal(errors.HttpError(400, "invalid_body", f"not a {message.DESCRIPTOR.name}: {error}"), True)
        try:
            answer = await gateway.call(method, message, api_key)
        except grpc.aio.AioRpcError as error:
            return _refusal(errors.from_rpc(error), True)
        return Response(
            json_format.MessageToJson(answer, indent=None, preserving_proto_field_name=False),
            media_type="application/json",
        )

    async def openapi_get(request: Request) -> Response:
        return JSONResponse(openapi.document(sorted(api_key_methods)))

    async def healthz(request: Request) -> Response:
        ok = await gateway.ready()
        return JSONResponse({"status": "SERVING" if ok else "NOT_SERVING"}, 200 if ok else 503)

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "SERVING"})

    service = cutout_pb2.DESCRIPTOR.services_by_name["Cutout"]
    all_methods = {m.name for m in service.methods}
    api_key_methods: dict[str, Callable[[], Message]] = {
        m.name: message_factory.GetMessageClass(m.input_type)
        for m in service.methods
        if not m.client_streaming and not m.server_streaming and m.name not in KEYLESS
    }

    routes = [
        Route("/v1.0/removebg", removebg_post, methods=["POST"]),
        Route("/v1.0/account", account_get, methods=["GET"]),
        Route("/v1/models", models_get, methods=["GET"]),
        Route("/v1/{method}", cutout_post, methods=["POST"]),
        Route("/openapi.json", openapi_get, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.open()  # inside the event loop, as grpc.aio wants
        try:
            yield
        finally:
            await gateway.close()

    async def failed(request: Request, error: Exception) -> Response:
        # The type only: an exception's text could quote what the caller sent.
        log.error("edge error on %s: %s", request.url.path, type(error).__name__, exc_info=error)
        return _refusal(
            errors.HttpError(
                500,
                "internal",
                "internal error of the HTTP edge; retry with the same Idempotency-Key to be charged at most once",
            )
        )

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: failed})
    return InFlight(app, settings.max_requests, settings.busy_retry_after_s)


def _number(decimal: str) -> int | float:
    """A credit amount as remove.bg's JSON number: whole credits as an integer."""
    value = float(decimal or 0)
    return int(value) if value.is_integer() else value
