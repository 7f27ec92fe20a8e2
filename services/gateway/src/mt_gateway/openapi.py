"""OpenAPI 3 of the REST API, generated from the route table and the pydantic models (the
API explorer at /docs, Swagger UI from web/docs, renders it)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mt_gateway import schemas
from mt_gateway.classes import class_of
from mt_gateway.routing import ENDPOINTS, Endpoint

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    400: "Invalid input",
    401: "No or bad token",
    403: "Not yours",
    404: "Unknown",
    409: "Conflict",
    413: "Too large",
    429: "Rate limited",
    503: "Shedding load",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _page_schema(item: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "One page of a list",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item), "description": "This page's items"},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Opaque: pass it as ?cursor= for the next page; null on the last",
            },
        },
    }


# What each path parameter, query parameter and header means.
_PARAMETER_TEXT = {
    "handle": "A user's handle (case-insensitive)",
    "id": "The resource's id",
    "legacy_id": "An account id on the legacy app",
    "limit": "Items per page, 1..100",
    "cursor": "next_cursor of the previous page; none for the first",
    "q": "The start of a handle (case-insensitive)",
    "Idempotency-Key": "Any string (1..128) naming this write: sent again with the same key "
    "(after a timeout or a 503), the post is made once and the same answer returned",
}
# Sections of the API explorer, by the path's first segment after /v1.
_TAGS = {
    "accounts": "Accounts",
    "sessions": "Accounts",
    "me": "Accounts",
    "users": "People",
    "search": "People",
    "posts": "Posts",
    "feed": "Feed",
    "notifications": "Notifications",
    "legacy": "Legacy app and import",
}
_INFO = """The REST API of minithreads (DESIGN.md §3). JSON in and out.

**Auth**: `Authorization: Bearer <token>` where an operation shows a lock; the token comes
from signing up (POST /v1/accounts) or logging in (POST /v1/sessions).

**Errors** are always `{"error": {"code": "<snake_case>", "message": "<sentence>"}}`: 400
invalid input, 401 no or bad token, 403 not yours, 404 unknown, 409 conflict, 413 too large,
429 rate limited and 503 shedding load, both with `Retry-After` (seconds). A 503 `overloaded`
did nothing: send it again after Retry-After. `x-criticality` says who is refused first
under overload (sheddable, then default; critical last).

**Lists** are `{"items": [...], "next_cursor": "<opaque>|null"}` with `?limit=` (1..100,
default 20) and `?cursor=`. Ids are strings; times RFC 3339 UTC."""


def _tag(path: str) -> str:
    segment = path.split("/")[2]
    if path.startswith(("/v1/me/following", "/v1/me/imports")):
        return "People" if "following" in path else "Legacy app and import"
    return _TAGS.get(segment, "Other")


def _parameters(ep: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"{(\w+)}", ep.path)
    ]
    if ep.paged:
        params += [
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
            },
            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        ]
    params += [
        {"name": q, "in": "query", "required": True, "schema": {"type": "string"}}
        for q in ep.extra_query
    ]
    params += [
        {"name": h, "in": "header", "schema": {"type": "string", "minLength": 1, "maxLength": 128}}
        for h in ep.headers
    ]
    for param in params:
        param["description"] = _PARAMETER_TEXT[param["name"]]
    return params


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": ep.summary,
        "description": ep.summary + (" (no token needed)" if ep.auth == "none" else ""),
        "operationId": ep.handler.__name__,
        "tags": [_tag(ep.path)],
        # Who is refused first under overload (mt_gateway.classes): for clients and load tests.
        "x-criticality": class_of(ep.method, ep.path).label,
    }
    if params := _parameters(ep):
        op["parameters"] = params
    if ep.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(ep.body)}},
        }
    if ep.auth == "required":
        op["security"] = [{"bearer": []}]
    elif ep.auth == "optional":
        op["security"] = [{"bearer": []}, {}]
    ok: dict[str, Any] = {"description": "OK"}
    if ep.response is not None and ep.status != 204:
        schema = _page_schema(ep.response) if ep.paged else _ref(ep.response)
        ok["content"] = {"application/json": {"schema": schema}}
    error = {"description": "", "content": {"application/json": {"schema": _ref(schemas.ErrorOut)}}}
    responses: dict[str, Any] = {str(ep.status): ok}
    # Whatever the handler raises, the pipeline adds these: a body can be malformed or too
    # large, a token (even an optional one) can be bad, and any request can be limited or shed.
    implied = {429, 503} | ({400, 413} if ep.body else set())
    if ep.auth in ("required", "optional"):
        implied.add(401)
    for status in sorted({*ep.errors, *implied}):
        responses[str(status)] = {**error, "description": _STATUS_TEXT.get(status, "Error")}
    op["responses"] = responses
    return op


def spec() -> dict[str, Any]:
    models = {m for ep in ENDPOINTS for m in (ep.body, ep.response) if m is not None} | {
        schemas.ErrorOut
    }
    _, defs = models_json_schema(
        [
            (m, "validation" if m in {ep.body for ep in ENDPOINTS} else "serialization")
            for m in sorted(models, key=lambda m: m.__name__)
        ],
        ref_template=_REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {"title": "minithreads REST API", "version": "1", "description": _INFO},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
