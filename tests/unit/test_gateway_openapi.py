"""The OpenAPI document explains itself: every field, parameter and operation described,
every operation in a section of the API explorer."""

from __future__ import annotations

from typing import Any

import mt_gateway.api  # noqa: F401 - the handlers register their routes on import
from mt_gateway.openapi import spec


def _undescribed(document: dict[str, Any]) -> list[str]:
    missing = []
    for name, schema in document["components"]["schemas"].items():
        if not schema.get("description"):
            missing.append(f"schema {name}")
        for field, prop in schema.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            if not (op.get("summary") and op.get("description") and op.get("tags")):
                missing.append(where)
            missing += [
                f"{where} ?{p['name']}"
                for p in op.get("parameters", [])
                if not p.get("description")
            ]
            for status, answer in op["responses"].items():
                page = answer.get("content", {}).get("application/json", {}).get("schema", {})
                missing += [
                    f"{where} {status} page.{f}"
                    for f, prop in page.get("properties", {}).items()
                    if not prop.get("description")
                ]
    return missing


def test_openapi__describes_every_field_parameter_and_operation() -> None:
    document = spec()
    assert len(document["paths"]) >= 20
    assert _undescribed(document) == []
    assert "Retry-After" in document["info"]["description"]
    imports = document["components"]["schemas"]["ImportOut"]["properties"]
    assert "joined" in imports["pending"]["description"]


def test_openapi__a_field_without_a_description_is_found() -> None:
    document = spec()
    del document["components"]["schemas"]["PostOut"]["properties"]["text"]["description"]
    assert _undescribed(document) == ["PostOut.text"]
