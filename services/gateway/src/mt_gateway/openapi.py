"""OpenAPI 3 of the REST API, generated from the route table and the pydantic models, and a
self-contained docs page rendering it."""

from __future__ import annotations

import html
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
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


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
    return params


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": ep.summary,
        "operationId": ep.handler.__name__,
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
        "info": {"title": "minithreads REST API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def docs_page() -> str:
    rows = "".join(
        f"<tr><td><code>{ep.method}</code></td><td><code>{html.escape(ep.path)}</code></td>"
        f"<td>{'🔒' if ep.auth == 'required' else ''}</td><td>{html.escape(ep.summary)}</td></tr>"
        for ep in ENDPOINTS
    )
    return (
        "<!doctype html><meta charset=utf-8><title>minithreads API</title>"
        "<style>body{font:15px system-ui;margin:2em}td{padding:.2em .8em}</style>"
        "<h1>minithreads REST API v1</h1><p>Machine-readable: "
        "<a href=/openapi.json>/openapi.json</a>. "
        'Errors: <code>{"error": {"code", "message"}}</code>. '
        "🔒 = <code>Authorization: Bearer &lt;token&gt;</code>.</p>"
        f"<table>{rows}</table>"
    )
