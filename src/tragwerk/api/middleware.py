"""Pure ASGI middleware: body-size limit before any work, request metrics and request ids."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tragwerk.monitoring.metrics import Metrics

METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (names as ASGI gives them: lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


EXTRA_HEADERS = "tragwerk.response_headers"


async def send_problem(
    send: Send,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Sequence[tuple[bytes, bytes]] = ((b"connection", b"close"),),
) -> None:
    """A problem response sent straight from an ASGI layer, before any route runs."""
    body = orjson.dumps(
        {
            "type": f"https://tragwerk.dev/problems/{code}",
            "title": title,
            "status": status,
            "detail": detail,
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_413(send: Send, limit: int) -> None:
    await send_problem(
        send,
        413,
        "body-too-large",
        "Content Too Large",
        f"the request body exceeds the limit of {limit} bytes",
    )


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class BodyGuard:
    """Refuse non-JSON bodies (415) and bodies over `limit` bytes (413) before the handler runs.

    A declared Content-Length over the limit is refused without reading; a chunked
    body is read up to the limit and refused as soon as it passes it. Bodies under
    the limit are buffered once and replayed to the app.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    await _send_413(send, self.limit)
                    return
            elif name == b"content-type":
                content_type = value
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_413(send, self.limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not _is_json(content_type):
            await send_problem(
                send,
                415,
                "unsupported-media-type",
                "Unsupported Media Type",
                "send the body as JSON with 'Content-Type: application/json'",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestMetrics:
    """Count and time every request by route template; give each a request id."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Request ids: a random per-process prefix and a counter. uuid4() reads
        # os.urandom per call, which was 19 % of a cached request's CPU (decisions/0004).
        self._prefix = os.urandom(5).hex()
        self._counter = itertools.count()
        # Labelled children looked up once: .labels() costs a lock and a hash per call.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = header(scope, b"x-request-id")
        if request_id is not None:
            request_id = request_id[:64]
        else:
            request_id = f"{self._prefix}{next(self._counter):012x}".encode()
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Inner layers leave their response fields here (the rate limiter's),
                # so that one send wrapper serves them all.
                extra = scope.get(EXTRA_HEADERS, ())
                message["headers"] = [
                    *message.get("headers", ()),
                    *extra,
                    (b"x-request-id", request_id),
                ]
            await send(message)

        self.metrics.http_in_flight.inc()
        structlog.contextvars.bind_contextvars(request_id=request_id.decode("latin-1"))
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
            self.metrics.http_in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.http_requests.labels(template, method, str(status)).inc()
            self.metrics.http_seconds.labels(template, method).observe(time.perf_counter() - start)
