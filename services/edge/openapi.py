"""The OpenAPI 3.1 document the edge serves at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from services.edge.removebg import KNOWN_FIELDS

_ERRORS = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "code": {"type": "string"}, "detail": {"type": "string"}},
            },
        }
    },
}
_KEY = [{"ApiKey": []}]


def _error_responses(*statuses: int) -> dict[str, Any]:
    words = {
        400: "invalid parameters",
        402: "not enough credits",
        403: "missing or bad API key",
        413: "body over the limit",
        429: "rate limited (Retry-After)",
        503: "busy or unavailable (Retry-After)",
    }
    return {
        str(status): {"description": words[status], "content": {"application/json": {"schema": _ERRORS}}}
        for status in statuses
    }


def document(methods: list[str]) -> dict[str, Any]:
    form = {
        "type": "object",
        "properties": {
            name: {"type": "string", "format": "binary"}
            if name in ("image_file", "bg_image_file")
            else {"type": "string"}
            for name in sorted(KNOWN_FIELDS)
        },
    }
    removebg = {
        "post": {
            "summary": "Remove the background (remove.bg API v1.0)",
            "security": _KEY,
            "requestBody": {
                "content": {
                    "multipart/form-data": {"schema": form},
                    "application/x-www-form-urlencoded": {"schema": form},
                    "application/json": {"schema": form},
                }
            },
            "responses": {
                "200": {
                    "description": "the cut-out; headers X-Credits-Charged, X-Type, X-Confidence, X-Width, X-Height, "
                    "X-Foreground-Top/Left/Width/Height",
                    "content": {
                        "image/png": {},
                        "image/jpeg": {},
                        "image/webp": {},
                        "application/zip": {},
                        "application/json": {"schema": {"type": "object", "properties": {"data": {"type": "object"}}}},
                    },
                },
                **_error_responses(400, 402, 403, 413, 429, 503),
            },
        }
    }
    paths: dict[str, Any] = {
        "/v1.0/removebg": removebg,
        "/v1.0/account": {
            "get": {
                "summary": "The balance (remove.bg API v1.0)",
                "security": _KEY,
                "responses": {"200": {"description": "data.attributes.credits"}, **_error_responses(403)},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The segmentation models this cell serves (cutout.v1.Cutout/ListModels as JSON)",
                "security": _KEY,
                "responses": {"200": {"description": "ListModelsResponse"}},
            }
        },
    }
    for method in methods:
        paths[f"/v1/{method}"] = {
            "post": {
                "summary": f"cutout.v1.Cutout/{method}: the request message as proto3 JSON, the answer likewise",
                "security": _KEY,
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": f"the {method} response as proto3 JSON"}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Cutout HTTP edge", "version": "v1"},
        "components": {"securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}},
        "paths": paths,
    }
