"""Kept for comparison only: how tragwerk served on uvicorn before it moved to granian.

bench.serve runs the full app on this protocol (`--server uvicorn`) beside granian, so
the move's gain is measured in the same run (docs/decisions/0009). It reaches into
uvicorn's private attributes and runs a copy of one of its methods, which is why
tragwerk itself no longer uses it (docs/decisions/0007, 0008, superseded).

Its original description: uvicorn with limits on the request head.

uvicorn's httptools protocol has no limit of its own on a request's head: a
20 MB header line or 100,000 header fields are buffered, parsed and handed to the
application, which walks them for every look-up (flood protection, component 4).
`BoundedHttpToolsProtocol` counts the bytes of a head while it arrives and refuses
one over `TRAGWERK_MAX_HEAD_BYTES`, or with more than `TRAGWERK_MAX_HEADERS` fields,
with `431 Request Header Fields Too Large` before any application code runs, and
closes the connection.

Its requests run in `ResponseCycle`, which writes the usual response head without
uvicorn's Python loop and two regular expressions per field (docs/decisions/0008).

uvicorn builds the protocol itself, per connection, and passes it only its own
configuration, so the limits are class attributes that `configure()` sets once per
process when the application is built (tragwerk.bootstrap.build_app).
"""

from __future__ import annotations

import asyncio
import operator
import sys
from collections.abc import Iterable
from types import FunctionType
from typing import Any, ClassVar

from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from tragwerk.api.middleware import problem_body
from tragwerk.domain.observability import ModuleReporter, Tally

LINGER_SECONDS = 1.0  # a refused connection stays open this long, its input dropped


class _Refused:
    """Stands in for the request cycle of a refused head, so that the parser's
    callbacks for the rest of the data (a body, the message's end) find a response
    already complete and do nothing, as uvicorn's callbacks check."""

    response_complete = True
    more_body = False
    disconnected = True

    def __init__(self) -> None:
        self.message_event = asyncio.Event()  # set by connection_lost


_VALUE = operator.itemgetter(1)
_FIELD = b": ".join  # one header field's line, from its (name, value) pair
# Bytes a field value may not hold (as uvicorn's check: controls but tab, and DEL)
# map to 0, all others to 1: one translate() and one `in` check every value at once.
_VALUE_BYTES = bytes(0 if b <= 8 or 0x0A <= b <= 0x1F or b == 0x7F else 1 for b in range(256))
_FRAMING = frozenset({b"transfer-encoding", b"connection"})  # left to uvicorn's code
_MAX_KNOWN_NAMES = 256
_AFTER_COMPLETE = (  # uvicorn's words
    "Unexpected ASGI message 'http.response.body' sent, after response already completed."
)


class ResponseCycle(RequestResponseCycle):
    """uvicorn's request cycle with a response head written without a loop per field.

    uvicorn checks each field of a response head with two regular expressions, lower-
    cases its name and compares it three times, in a Python loop: the two RateLimit
    fields alone cost 9,400 instructions per response (bench.instructions). Here the
    names are checked against those already seen to be valid and in lower case, the
    values all at once, and the lines are built in C. A head this cannot take as it
    is (a name not seen yet, repeated names, a framing field such as transfer-encoding
    or connection, an access log, paused writing) goes through uvicorn's own code,
    whose names are then known. tests/unit/test_response_cycle.py holds the two to
    the same bytes (docs/decisions/0008).
    """

    known_names: ClassVar[set[bytes]] = set()

    async def send(self, message: Any) -> None:
        if self.disconnected or self.flow.write_paused:
            await RequestResponseCycle.send(self, message)
            return
        if self.response_started:
            if self.chunked_encoding is False and message["type"] == "http.response.body":
                self._write_body(message)  # the usual body: one piece, its length known
            else:
                await RequestResponseCycle.send(self, message)
            return
        if message["type"] != "http.response.start" or self.access_log:
            await RequestResponseCycle.send(self, message)
            return
        headers = self.default_headers + list(message.get("headers", ()))
        try:
            fields = dict(headers)  # by name; fails unless every field is a pair
        except (TypeError, ValueError):
            fields = {}
        if len(fields) != len(headers) or not self.known_names.issuperset(fields):
            # A name not known yet or repeated, or a field that is not a pair.
            await RequestResponseCycle.send(self, message)
            self._learn(fields)
            return
        try:
            # `0 in`, not `b"\0" in`: a bytes operand is first tried as an int, and the
            # TypeError that raises and drops costs more than the search.
            bad = 0 in b"\t".join(map(_VALUE, headers)).translate(_VALUE_BYTES)
            lines = b"\r\n".join(map(_FIELD, headers))  # joins beat a format per field
        except TypeError:  # not bytes: uvicorn's code says what is wrong
            await RequestResponseCycle.send(self, message)
            return
        self.response_started = True  # before the checks, as uvicorn: a failed head is
        self.waiting_for_100_continue = False  # not followed by a 500, the connection closes
        if bad:
            raise RuntimeError("Invalid HTTP header value.")
        status = message["status"]
        head = [STATUS_LINE[status], lines, b"\r\n"] if headers else [STATUS_LINE[status]]
        length = fields.get(b"content-length")
        if length is not None:
            self.expected_content_length = int(length.decode())
            self.chunked_encoding = False
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head))

    def _write_body(self, message: Any) -> None:
        """uvicorn's code for a body under content-length, without its own coroutine."""
        if self.response_complete:
            raise RuntimeError(_AFTER_COMPLETE)
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        else:
            num_bytes = len(body)
            if num_bytes > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= num_bytes
            self.transport.write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _learn(self, names: Iterable[Any]) -> None:
        """Names uvicorn's code just accepted: valid; in lower case, they are known."""
        known = self.known_names
        if len(known) < _MAX_KNOWN_NAMES:
            known.update(
                name
                for name in names
                if isinstance(name, bytes) and name == name.lower() and name not in _FRAMING
            )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # Until configure(): the settings' defaults.
    max_head_bytes: ClassVar[int] = 16_384
    max_headers: ClassVar[int] = 100
    refused: ClassVar[Tally] = Tally()

    # Per connection. `_head_bytes`: the bytes of the reads that began outside a
    # request body, since the last complete head. `_bounded`: whether that count
    # covers the whole of the next head to complete: true for the first head in a
    # read that began outside a body; false after a body (its read began inside one)
    # or after another head in the same read (the count restarted mid-read). A
    # bounded count under the limit decides a head with one comparison; otherwise
    # the head is measured field by field. An incomplete head is refused once the
    # count passes the limit: the count never exceeds what that head has sent, and
    # falls short of it by one read at most.
    # In slots, not the instance's dict: uvicorn's protocol already keeps about thirty
    # attributes there, and more made every attribute access of the protocol slower
    # (2,300 instructions per request, counted with bench.instructions).
    __slots__ = ("_bounded", "_head_bytes", "_too_large")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._bounded = True
        self._too_large = False

    # Two overrides, and the parent's methods called through the class: each layer
    # here runs on every request, and a super() call showed in instruction counts.
    @classmethod
    def configure(cls, max_head_bytes: int, max_headers: int, reporter: ModuleReporter) -> None:
        cls.max_head_bytes = max_head_bytes
        cls.max_headers = max_headers
        cls.refused = reporter.tally("head_too_large")

    def data_received(self, data: bytes) -> None:
        if self._too_large:
            return  # refused: what still comes is dropped until the connection closes
        cycle = self.cycle
        if cycle is None or not cycle.more_body:  # not inside a body: a head is coming
            self._head_bytes += len(data)
            self._bounded = True
        HttpToolsProtocol.data_received(self, data)
        # Still no complete head (a completed one resets the count) and already too
        # large: refuse now rather than buffer it until it ends, which it need not.
        if self._head_bytes > self.max_head_bytes:
            self._refuse()

    def on_headers_complete(self) -> None:
        headers = self.headers
        if (
            self._head_bytes > self.max_head_bytes
            or not self._bounded
            or len(headers) > self.max_headers
        ):
            size = len(self.url) + sum(len(name) + len(value) for name, value in headers)
            too_many = len(headers) > self.max_headers
            if self._too_large or size > self.max_head_bytes or too_many:
                self._refuse()
                return  # no request cycle: the application never sees it
        self._head_bytes = 0
        self._bounded = False  # another head in this read was not counted from its start
        _start_cycle(self)

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:  # after a 431, nothing more is sent
            super().send_400_response(msg)

    def _refuse(self) -> None:
        if self._too_large:
            return
        self._too_large = True
        owed = self.cycle
        self.cycle = _Refused()  # type: ignore[assignment]  # see _Refused
        # Past any limit, so that on_headers_complete refuses heads that follow in the
        # data already given to the parser, without a check of its own per request.
        self._head_bytes = sys.maxsize
        self.refused.n += 1
        if owed is not None and not owed.response_complete:
            # An earlier request on this connection is still owed its response, and
            # responses keep their order: it finishes and then closes the connection;
            # the refused request gets no answer of its own.
            owed.keep_alive = False
            return
        body = problem_body(
            431,
            "header-fields-too-large",
            "Request Header Fields Too Large",
            f"the request head is over {self.max_head_bytes} bytes or {self.max_headers} fields",
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/problem+json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        # The client may still be sending its head. Closing with its bytes unread would
        # reset the connection, and a reset can destroy the answer before the client
        # reads it; so end our side, drop what still comes, and close a second later.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


# uvicorn's own on_headers_complete, its code unchanged, building a ResponseCycle where
# it builds its RequestResponseCycle (a name it looks up in its module's globals).
# Swapping the class of a built cycle instead made every attribute access on it slower.
_start_cycle = FunctionType(
    HttpToolsProtocol.on_headers_complete.__code__,
    {**vars(httptools_impl), "RequestResponseCycle": ResponseCycle},
    "on_headers_complete",
)


def uvicorn_options() -> dict[str, Any]:
    """The uvicorn settings every API process runs with (tragwerk up, api, benchmarks)."""
    return {
        "http": BoundedHttpToolsProtocol,
        "log_config": None,  # tragwerk's JSON logging stays in charge
        "access_log": False,  # per-request lines cost CPU; /metrics counts requests instead
        "server_header": False,
    }
