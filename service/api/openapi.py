"""The OpenAPI schema the service publishes: FastAPI's, without `null` in form fields and query
parameters.

FastAPI documents an optional parameter (`flip: bool | None = None`) as
`anyOf: [{"type": "boolean"}, {"type": "null"}]`. A multipart form and a query string cannot
carry a null: a client leaves the field out, and the text "null" is refused (`flip` is not a
boolean). An optional upload documented that way is not recognisable as a file either, so
clients built from the schema send it as a text field, which is refused too. The published
schema therefore gives each such field its own type and leaves it optional, which is exactly
what the service accepts. JSON bodies and responses keep their nulls: JSON has them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.api.auth import document_api_keys
from service.api.ratelimit import document_rate_limit

FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_NULL = {"type": "null"}


def without_null(property_schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, null]` (plus title, description, default...) -> X with those keys."""
    alternatives = property_schema.get("anyOf")
    if not isinstance(alternatives, list) or _NULL not in alternatives:
        return property_schema
    others = [alternative for alternative in alternatives if alternative != _NULL]
    rest = {key: value for key, value in property_schema.items() if key != "anyOf"}
    if rest.get("default", ...) is None:
        del rest["default"]
    if len(others) == 1:
        return {**others[0], **rest}
    return {**rest, "anyOf": others}


def _component(schema: dict[str, Any], reference: str) -> dict[str, Any]:
    """The object a local `#/components/...` reference points at."""
    node: Any = schema
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return node


def strip_form_and_query_nulls(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite, in place, every form body property and query parameter that accepts null."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter.get("in") == "query" and "schema" in parameter:
                    parameter["schema"] = without_null(parameter["schema"])
            content = operation.get("requestBody", {}).get("content", {})
            for media_type in FORM_MEDIA_TYPES:
                body = content.get(media_type, {}).get("schema")
                if body is None:
                    continue
                if "$ref" in body:
                    body = _component(schema, body["$ref"])
                properties = body.get("properties", {})
                for name, property_schema in properties.items():
                    properties[name] = without_null(property_schema)
    return schema


def install_openapi(app: FastAPI, *, api_keys: bool = False, rate_limit: bool = False) -> None:
    """Make `app.openapi()` (and /openapi.json, /docs) serve the rewritten schema; with
    `api_keys`, one that declares the keys every protected operation needs; with `rate_limit`,
    the 429 every limited operation may answer."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = strip_form_and_query_nulls(generate())
            schema = document_api_keys(schema) if api_keys else schema
            app.openapi_schema = document_rate_limit(schema) if rate_limit else schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
