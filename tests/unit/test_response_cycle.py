"""tragwerk's response cycle writes what uvicorn's own cycle writes, byte for byte.

Each case sends the same ASGI messages through uvicorn's RequestResponseCycle and
through tragwerk.api.http_server.ResponseCycle (twice: once while its field names are
new, once when they are known and the fast path takes the head), and compares the
bytes written, the cycle's state afterwards and any error raised.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from tragwerk.api.http_server import ResponseCycle

DATE = [(b"date", b"Thu, 26 Nov 2026 08:00:00 GMT")]


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Flow:
    write_paused = False


def cycle(
    cls: type[RequestResponseCycle], method: str, keep_alive: bool, defaults: list[Any]
) -> RequestResponseCycle:
    return cls(
        scope={"method": method, "type": "http"},  # type: ignore[typeddict-item]
        transport=Transport(),  # type: ignore[arg-type]
        flow=Flow(),  # type: ignore[arg-type]
        logger=None,  # type: ignore[arg-type]
        access_logger=None,  # type: ignore[arg-type]
        access_log=False,
        default_headers=defaults,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )


async def run(
    cls: type[RequestResponseCycle],
    messages: list[dict[str, Any]],
    method: str,
    keep_alive: bool,
    defaults: list[Any] = DATE,
) -> tuple[list[bytes], dict[str, Any], str | None]:
    c = cycle(cls, method, keep_alive, defaults)
    error = None
    try:
        for message in messages:
            await c.send(message)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - the error is part of what is compared
        error = f"{type(exc).__name__}: {exc}"
    state = {
        name: getattr(c, name)
        for name in (
            "response_started",
            "response_complete",
            "chunked_encoding",
            "expected_content_length",
            "keep_alive",
        )
    }
    state["closed"] = c.transport.closed  # type: ignore[attr-defined]
    return c.transport.written, state, error  # type: ignore[attr-defined]


def start(headers: list[Any], status: int = 200) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


JSON = (b"content-type", b"application/json")
CASES: dict[str, tuple[list[dict[str, Any]], str, bool]] = {
    "usual": ([start([JSON, (b"content-length", b"2")]), body(b"{}")], "GET", True),
    "rate-limit fields": (
        [
            start(
                [
                    JSON,
                    (b"content-length", b"2"),
                    (b"ratelimit-policy", b'"external";q=1200;w=60'),
                    (b"ratelimit", b'"external";r=1199;t=60'),
                    (b"x-request-id", b"0123456789abcdef"),
                ]
            ),
            body(b"{}"),
        ],
        "GET",
        True,
    ),
    "no keep-alive": ([start([JSON, (b"content-length", b"2")]), body(b"{}")], "GET", False),
    "chunked": ([start([JSON]), body(b"ab", more=True), body(b"c")], "GET", True),
    "chunked, no keep-alive": ([start([JSON]), body(b"abc")], "GET", False),
    "HEAD": ([start([JSON, (b"content-length", b"2")]), body(b"")], "HEAD", True),
    "HEAD without length": ([start([JSON]), body(b"")], "HEAD", True),
    "204": ([start([JSON], status=204), body(b"")], "GET", True),
    "304": ([start([JSON], status=304), body(b"")], "GET", True),
    "body in pieces": (
        [start([JSON, (b"content-length", b"4")]), body(b"ab", more=True), body(b"cd")],
        "GET",
        True,
    ),
    "body too long": ([start([JSON, (b"content-length", b"1")]), body(b"{}")], "GET", True),
    "body too short": ([start([JSON, (b"content-length", b"3")]), body(b"{}")], "GET", True),
    "body after the end": (
        [start([JSON, (b"content-length", b"2")]), body(b"{}"), body(b"")],
        "GET",
        True,
    ),
    "body first": ([body(b"{}")], "GET", True),
    "start twice": ([start([JSON]), start([JSON])], "GET", True),
    "connection: close": (
        [start([JSON, (b"content-length", b"2"), (b"connection", b"close")]), body(b"{}")],
        "GET",
        True,
    ),
    "transfer-encoding": (
        [start([JSON, (b"transfer-encoding", b"chunked")]), body(b"ab")],
        "GET",
        True,
    ),
    "repeated names": (
        [
            start([(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"0")]),
            body(b""),
        ],
        "GET",
        True,
    ),
    "content-length twice": (
        [start([(b"content-length", b"2"), (b"content-length", b"3")]), body(b"{}")],
        "GET",
        True,
    ),
    "upper-case name": (
        [start([(b"Content-Type", b"text/plain"), (b"content-length", b"1")]), body(b"x")],
        "GET",
        True,
    ),
    "fields as lists": ([start([[b"content-length", b"1"]]), body(b"x")], "GET", True),
    "a field of three": ([start([(b"content-type", b"a", b"\r\nx: y")])], "GET", True),
    "a field of one": ([start([(b"content-type",)])], "GET", True),
    "tab in a value": (
        [start([(b"content-type", b"text/plain;\tq=1"), (b"content-length", b"0")]), body(b"")],
        "GET",
        True,
    ),
    "obs-text in a value": (
        [start([(b"content-type", b"text/plain; x=\xe9"), (b"content-length", b"0")])],
        "GET",
        True,
    ),
    "CR LF in a value": (
        [start([(b"content-type", b"a\r\nset-cookie: x=1"), (b"content-length", b"0")])],
        "GET",
        True,
    ),
    "LF in a value": ([start([(b"content-type", b"a\nb")])], "GET", True),
    "NUL in a value": ([start([(b"content-type", b"a\x00b")])], "GET", True),
    "ESC in a value": ([start([(b"content-type", b"a\x1bb")])], "GET", True),
    "DEL in a value": ([start([(b"content-type", b"a\x7fb")])], "GET", True),
    "space in a name": ([start([(b"content type", b"a")])], "GET", True),
    "colon in a name": ([start([(b"content-type:", b"a")])], "GET", True),
    "str value": ([start([(b"content-type", "text/plain")])], "GET", True),
    "bad content-length": ([start([(b"content-length", b"two")])], "GET", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_writes_what_uvicorn_writes(case: str) -> None:
    messages, method, keep_alive = CASES[case]
    ResponseCycle.known_names.clear()
    expected = await run(RequestResponseCycle, messages, method, keep_alive)
    first = await run(ResponseCycle, messages, method, keep_alive)  # names new: uvicorn's path
    second = await run(ResponseCycle, messages, method, keep_alive)  # names known, if valid
    ResponseCycle.known_names.update(VALID_NAMES)  # bad values under known names, too
    third = await run(ResponseCycle, messages, method, keep_alive)
    assert first == expected
    assert second == expected
    assert third == expected


VALID_NAMES = {b"date", b"content-type", b"content-length", b"set-cookie", b"x-request-id"}


async def test_known_names_take_the_fast_path() -> None:
    """Once seen, valid lower-case names are known; framing fields never are."""
    ResponseCycle.known_names.clear()
    messages, method, keep_alive = CASES["rate-limit fields"]
    await run(ResponseCycle, messages, method, keep_alive)
    await run(ResponseCycle, CASES["connection: close"][0], "GET", True)
    await run(ResponseCycle, CASES["upper-case name"][0], "GET", True)
    assert ResponseCycle.known_names == {
        b"date",
        b"content-type",
        b"content-length",
        b"ratelimit-policy",
        b"ratelimit",
        b"x-request-id",
    }


async def test_a_bad_value_under_known_names_is_refused() -> None:
    """The fast path checks values itself: known names do not let a bad value through."""
    ResponseCycle.known_names.clear()
    await run(ResponseCycle, CASES["usual"][0], "GET", True)
    assert b"content-type" in ResponseCycle.known_names
    for bad in (b"a\r\nb", b"a\x01b", b"a\x7f"):
        written, _state, error = await run(
            ResponseCycle, [start([(b"content-type", bad), (b"content-length", b"0")])], "GET", True
        )
        assert written == []
        assert error == "RuntimeError: Invalid HTTP header value."


async def test_a_head_without_fields() -> None:
    ResponseCycle.known_names.clear()
    messages = [start([], status=204), body(b"")]
    expected = await run(RequestResponseCycle, messages, "GET", True, defaults=[])
    assert expected[0][0] == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert await run(ResponseCycle, messages, "GET", True, defaults=[]) == expected
