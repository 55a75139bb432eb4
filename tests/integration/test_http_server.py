"""Limits on the request head: a real uvicorn server with tragwerk's protocol, over TCP.

The application here only counts the requests it sees: a refused head must never
reach it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from tests.services import free_port
from tragwerk.api.http_server import LINGER_SECONDS, BoundedHttpToolsProtocol, uvicorn_options
from tragwerk.domain.observability import SilentReporter

LIMIT = 4096


class Counting:
    def __init__(self) -> None:
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.seen += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reply = str(len(body)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(reply)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": reply})


@pytest.fixture
async def server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[tuple[int, Counting]]:
    BoundedHttpToolsProtocol.configure(LIMIT, 20, SilentReporter())
    app = Counting()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **uvicorn_options())
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:  # noqa: ASYNC110 - uvicorn.Server offers only this flag
        await asyncio.sleep(0.01)
    try:
        yield port, app
    finally:
        srv.should_exit = True
        await task
    # Closing the connections (uvicorn's connection_lost and the rest) raised nowhere.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send `parts` (pausing between them), then read until the server closes or 2 s pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
    except ConnectionError:
        pass  # the server closed early: what it sent before is what counts
    received = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 2):
            received += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return received


def status_lines(received: bytes) -> list[bytes]:
    # Responses follow each other directly: a status line may follow a body's last byte.
    return re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+", received)


def head(*fields: bytes, method: bytes = b"GET", path: bytes = b"/") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
        method,
        path,
        b"".join(field + b"\r\n" for field in fields),
    )


async def test_a_head_over_the_limit_gets_431_and_never_reaches_the_app(
    server: tuple[int, Counting], caplog: pytest.LogCaptureFixture
) -> None:
    port, app = server
    before = BoundedHttpToolsProtocol.refused.n
    caplog.set_level(logging.WARNING, logger="uvicorn.error")
    received = await exchange(port, head(b"X-Big: " + b"a" * (LIMIT + 1)))
    assert status_lines(received) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    problem = json.loads(received.split(b"\r\n\r\n", 1)[1])
    assert problem["status"] == 431
    assert problem["type"].endswith("/header-fields-too-large")
    assert b"connection: close" in received.lower()
    assert app.seen == 0
    assert BoundedHttpToolsProtocol.refused.n == before + 1
    assert "Invalid HTTP request" not in caplog.text  # not uvicorn's misleading 400 warning


async def test_a_head_that_never_ends_is_refused_before_it_ends(
    server: tuple[int, Counting],
) -> None:
    port, app = server
    # The head grows in pieces and is never finished (no blank line): the server
    # must answer once it passes the limit rather than wait for, and buffer, the rest.
    pieces = [b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "] + [b"a" * 1024] * 64
    received = await exchange(port, *pieces, pause=0.005)
    assert status_lines(received) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert app.seen == 0


async def test_too_many_header_fields_get_431(server: tuple[int, Counting]) -> None:
    port, app = server
    received = await exchange(port, head(*(b"X-F%d: v" % i for i in range(25))))
    assert status_lines(received) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert app.seen == 0


async def test_heads_within_the_limits_pass_on_a_kept_alive_connection(
    server: tuple[int, Counting],
) -> None:
    port, app = server
    # Three requests in one write (pipelined), each head just under the limit in
    # bytes, the second with a body far larger than the head limit: bytes of a body
    # are not counted as head bytes, and the count starts again for each request.
    big_field = b"X-Pad: " + b"p" * (LIMIT - 200)
    body = b"b" * (LIMIT * 8)
    received = await exchange(
        port,
        head(big_field)
        + head(big_field, b"Content-Length: %d" % len(body), method=b"POST")
        + body
        + head(big_field, b"Connection: close"),
    )
    assert status_lines(received) == [b"HTTP/1.1 200 OK"] * 3
    assert app.seen == 3
    assert received.endswith(b"0")  # the last request had no body


async def test_other_malformed_requests_still_get_uvicorns_400(
    server: tuple[int, Counting],
) -> None:
    port, app = server
    received = await exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert status_lines(received) == [b"HTTP/1.1 400 Bad Request"]
    assert app.seen == 0


async def test_after_a_refusal_the_rest_of_the_data_is_dropped(
    server: tuple[int, Counting], caplog: pytest.LogCaptureFixture
) -> None:
    port, app = server
    caplog.set_level(logging.WARNING)
    # A refused head with a body, and another request behind it, all in one write:
    # the parser still goes through the body and the next head.
    received = await exchange(
        port,
        head(b"X-Big: " + b"a" * (LIMIT + 1), b"Content-Length: 5", method=b"POST")
        + b"hello"
        + head(),
    )
    assert status_lines(received) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert app.seen == 0
    await asyncio.sleep(LINGER_SECONDS + 0.2)  # the server has closed the connection
    # Neither uvicorn's 400 warning nor an error from its callbacks (connection_lost
    # and the rest find the stand-in cycle) was logged.
    assert [r.getMessage() for r in caplog.records] == []


async def test_an_oversized_head_behind_other_requests_in_one_read_is_refused(
    server: tuple[int, Counting],
) -> None:
    port, app = server
    big = b"X-Big: " + b"a" * (LIMIT + 1)
    # Behind a body in the same read, and behind a bodyless request: neither head is
    # counted from its start there, so each is measured. The request before is still
    # owed its response when the head is refused: it gets it, then the connection
    # closes (responses keep their order), and the refused one gets none.
    body = b"b" * 100
    for before in (head(b"Content-Length: %d" % len(body), method=b"POST") + body, head()):
        seen = app.seen
        received = await exchange(port, before + head(big))
        assert status_lines(received) == [b"HTTP/1.1 200 OK"]
        assert app.seen == seen + 1
