"""The HTTP server every API process runs: uvicorn with limits on the request head.

uvicorn's httptools protocol has no limit of its own on a request's head: a
20 MB header line or 100,000 header fields are buffered, parsed and handed to the
application, which walks them for every look-up (flood protection, component 4).
`BoundedHttpToolsProtocol` counts the bytes of a head while it arrives and refuses
one over `TRAGWERK_MAX_HEAD_BYTES`, or with more than `TRAGWERK_MAX_HEADERS` fields,
with `431 Request Header Fields Too Large` before any application code runs, and
closes the connection.

uvicorn builds the protocol itself, per connection, and passes it only its own
configuration, so the limits are class attributes that `configure()` sets once per
process when the application is built (tragwerk.bootstrap.build_app).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tragwerk.domain.observability import ModuleReporter, Tally

DEFAULT_MAX_HEAD_BYTES = 16_384
DEFAULT_MAX_HEADERS = 100
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


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes: ClassVar[int] = DEFAULT_MAX_HEAD_BYTES
    max_headers: ClassVar[int] = DEFAULT_MAX_HEADERS
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
        HttpToolsProtocol.on_headers_complete(self)

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
        body = orjson.dumps(
            {
                "type": "https://tragwerk.dev/problems/header-fields-too-large",  # as send_problem
                "title": "Request Header Fields Too Large",
                "status": 431,
                "detail": f"the request head is over {self.max_head_bytes} bytes "
                f"or {self.max_headers} fields",
            }
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


def uvicorn_options() -> dict[str, Any]:
    """The uvicorn settings every API process runs with (tragwerk up, api, benchmarks)."""
    return {
        "http": BoundedHttpToolsProtocol,
        "log_config": None,  # tragwerk's JSON logging stays in charge
        "access_log": False,  # per-request lines cost CPU; /metrics counts requests instead
        "server_header": False,
    }
