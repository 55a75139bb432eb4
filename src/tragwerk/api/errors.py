"""The one place where errors become RFC 9457 problem responses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from tragwerk.api.responses import ProblemJSON
from tragwerk.domain import errors as domain
from tragwerk.store.database import database_unreachable

log = structlog.get_logger("tragwerk.api")

PROBLEM_BASE = "https://tragwerk.dev/problems/"

STATUS_OF: Mapping[type[domain.DomainError], int] = {
    domain.NotFound: 404,
    domain.InvalidTransition: 409,
    domain.StaleVersion: 409,
    domain.Conflict: 409,
    domain.InvalidReference: 422,
    domain.InvalidInput: 422,
    domain.InvalidCursor: 400,
    domain.Unauthenticated: 401,
    domain.Forbidden: 403,
}

TITLES: Mapping[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return ProblemJSON(body, status_code=status, headers=dict(headers or {}))


class PreconditionFailed(Exception):
    """If-Match named a version other than the stored one (412 instead of 409)."""

    def __init__(self, detail: str, current_version: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.current_version = current_version


class PreconditionRequired(Exception):
    """A change without a version could overwrite someone else's (428)."""


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "location": [str(part) for part in err.get("loc", ())],
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in errors
    ]


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(err.get("type") == "json_invalid" for err in errors):
        return problem(
            400, "malformed-json", "the request body is not valid JSON", instance=request.url.path
        )
    return problem(
        422,
        "validation-failed",
        "the request does not match the schema; see errors",
        instance=request.url.path,
        errors=_validation_errors(errors),
    )


async def _on_domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, domain.DomainError)
    status = STATUS_OF.get(type(exc), 400)
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, domain.StaleVersion):
        extra["current_version"] = exc.current_version
    if isinstance(exc, domain.Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="tragwerk"'
    return problem(
        status, exc.code, exc.detail, instance=request.url.path, headers=headers, **extra
    )


async def _on_precondition_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PreconditionFailed)
    return problem(
        412,
        "precondition-failed",
        exc.detail,
        instance=request.url.path,
        current_version=exc.current_version,
    )


async def _on_precondition_required(request: Request, exc: Exception) -> Response:
    return problem(
        428,
        "version-required",
        "send the version you read, as If-Match or as 'version' in the body, "
        "so that no one else's change is overwritten",
        instance=request.url.path,
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
    detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "Error")
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.url.path}"
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed on {request.url.path}; use {headers['Allow']}"
    return problem(
        exc.status_code,
        codes.get(exc.status_code, "http-error"),
        detail,
        instance=request.url.path,
        headers=headers,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's router answers 405 from
    the first route whose path matches, so its Allow names that route's methods only;
    with one route per method (FastAPI's way) that was one of several."""
    allowed: set[str] = set()
    for route in request.app.state.api_routes:  # set by tragwerk.api.app.create_app
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            allowed |= set(route.methods or ())
    return sorted(allowed)


DATABASE_UNAVAILABLE = "the database cannot be reached right now; nothing was changed, retry"


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    if database_unreachable(exc):
        # Not the request's fault, and not a bug: the server is restarting or down.
        # One line, no traceback: during an outage every request would log one.
        log.warning("database unreachable", path=request.url.path, error=repr(exc))
        return problem(
            503,
            "database-unavailable",
            DATABASE_UNAVAILABLE,
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return problem(
        500,
        "internal-error",
        "an unexpected error occurred; it has been logged",
        instance=request.url.path,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(domain.DomainError, _on_domain)
    app.add_exception_handler(PreconditionFailed, _on_precondition_failed)
    app.add_exception_handler(PreconditionRequired, _on_precondition_required)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
