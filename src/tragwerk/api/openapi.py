"""The OpenAPI document, with the problem responses each route really gives.

FastAPI documents a route's success response and, where it takes parameters, a 422
in its own validation format. tragwerk answers every error as an RFC 9457 problem
(`application/problem+json`, tragwerk.api.errors), and most of them come from layers
FastAPI does not see: the gate (429, 503, 413, 415), the authentication dependency
(401, 403). So the document is completed here, from what each route is:

- behind the rate limiter and admission (every route but health, metrics and docs):
  429 and 503;
- authenticated (it depends on `principal`): 401; checks a permission: 403;
- takes a body (POST, PUT, PATCH): 400 (malformed JSON), 413, 415;
- takes parameters or a body: 422 (the problem format, not FastAPI's);
- has a path parameter: 404; takes a `cursor`: 400 (an invalid cursor);
- anything only the handler knows (409, 412, 428, a 404 without a path parameter, a
  403 decided by ownership) the route declares itself with `problems(...)`.

The authorization matrix test (tests/integration/test_authorization_matrix.py)
checks that every status a route answered is listed here for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from tragwerk.api.auth import principal
from tragwerk.ratelimit.policy import route_cost

PROBLEM_MEDIA_TYPE = "application/problem+json"
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

DESCRIPTIONS: dict[int, str] = {
    400: "Malformed JSON, or a cursor that is not one this API issued",
    401: "No token, or one that is unknown, expired, revoked or of a deactivated user",
    403: "The token lacks the permission this route needs",
    404: "The record does not exist",
    409: "The change conflicts with the stored state (a stale version, a duplicate, an"
    " invalid status change)",
    412: "If-Match named a version other than the stored one",
    413: "The body is larger than TRAGWERK_MAX_BODY_BYTES",
    415: "The body is not JSON",
    422: "The request does not match the schema, or names a record that does not exist",
    428: "The change names no version (If-Match or 'version' in the body)",
    429: "The caller's rate limit is spent; Retry-After says when to come back",
    503: "Overloaded: the request was shed (low priority first); Retry-After says when",
}

_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "422 only: each field that failed validation",
            "items": {
                "type": "object",
                "properties": {
                    "location": {"type": "array", "items": {"type": "string"}},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
        "current_version": {
            "type": "integer",
            "description": "409 and 412 of a versioned write: the stored version",
        },
    },
}


def problems(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the problem statuses only its handler knows about.
    A description given as `s409="..."` replaces the general one."""
    return {
        status: {"description": descriptions.get(f"s{status}", DESCRIPTIONS[status])}
        for status in statuses
    }


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    found: set[Callable[..., Any]] = set()
    for sub in dependant.dependencies:
        if sub.call is not None:
            found.add(sub.call)
        found |= _calls(sub)
    return found


def route_problems(route: APIRoute, method: str) -> set[int]:
    """The problem statuses a route gives, from what it is (see the module docstring)."""
    statuses = {  # declared with problems(); a response with its own content stays as it is
        int(status)
        for status, entry in route.responses.items()
        if str(status).isdigit() and int(status) >= 400 and not {"model", "content"} & set(entry)
    }
    if route_cost(method, route.path) > 0:
        statuses |= {429, 503}
    calls = _calls(route.dependant)
    if principal in calls:
        statuses.add(401)
        if any(getattr(call, "permission", None) is not None for call in calls):
            statuses.add(403)
    if method in METHODS_WITH_BODY:
        statuses |= {400, 413, 415}
    if route.dependant.path_params:
        statuses.add(404)
    if any(p.alias == "cursor" for p in route.dependant.query_params):
        statuses.add(400)
    if route.body_field is not None or route.dependant.query_params or statuses & {404}:
        statuses.add(422)
    return statuses


def install(app: FastAPI, routes: Sequence[APIRoute]) -> None:
    """Make `app.openapi()` return the completed document (built once, then kept);
    `routes` are the app's API routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = _PROBLEM_SCHEMA
        problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for route in routes:
            if not route.include_in_schema:
                continue
            for method in route.methods or ():
                operation = document["paths"][route.path_format][method.lower()]
                responses = operation.setdefault("responses", {})
                for status in sorted(route_problems(route, method)):
                    entry = responses.setdefault(str(status), {})
                    entry.setdefault("description", DESCRIPTIONS[status])
                    entry["content"] = problem
        # FastAPI's own validation error models are no longer referenced.
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
