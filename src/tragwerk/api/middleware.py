"""Helpers for tragwerk's ASGI layers: header look-up, problem responses, body limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (names as ASGI gives them: lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def problem_body(status: int, code: str, title: str, detail: str) -> bytes:
    """The JSON of a problem answered before any route runs (RFC 9457)."""
    return orjson.dumps(
        {
            "type": f"https://tragwerk.dev/problems/{code}",
            "title": title,
            "status": status,
            "detail": detail,
        }
    )


async def send_problem(
    send: Send,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Sequence[tuple[bytes, bytes]] = ((b"connection", b"close"),),
) -> None:
    """A problem response sent straight from an ASGI layer, before any route runs."""
    body = problem_body(status, code, title, detail)
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


async def guard_body(receive: Receive, send: Send, headers: Any, limit: int) -> Receive | None:
    """Refuse non-JSON bodies (415) and bodies over `limit` bytes (413) before the handler
    runs; None once refused, else a `receive` that replays the body.

    A declared Content-Length over the limit is refused without reading; a chunked
    body is read up to the limit and refused as soon as it passes it. Bodies under
    the limit are buffered once and replayed to the app.
    """
    content_type = b""
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = limit + 1
            if declared > limit:
                await _send_413(send, limit)
                return None
        elif name == b"content-type":
            content_type = value
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _send_413(send, limit)
            return None
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
        return None
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
