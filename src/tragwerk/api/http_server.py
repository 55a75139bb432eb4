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

from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tragwerk.domain.observability import ModuleReporter, Tally

DEFAULT_MAX_HEAD_BYTES = 16_384
DEFAULT_MAX_HEADERS = 100
LINGER_SECONDS = 1.0  # a refused connection stays open this long, its input dropped


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes: ClassVar[int] = DEFAULT_MAX_HEAD_BYTES
    max_headers: ClassVar[int] = DEFAULT_MAX_HEADERS
    refused: ClassVar[Tally] = Tally()

    # Per connection. Bytes received since the last complete head: an upper bound of
    # the current head's size, exact enough to decide nearly every request with one
    # comparison; only past the limit is the head measured field by field.
    _head_bytes = 0
    _in_head = True  # a head is arriving (or the next one is awaited)
    _too_large = False

    @classmethod
    def configure(cls, max_head_bytes: int, max_headers: int, reporter: ModuleReporter) -> None:
        cls.max_head_bytes = max_head_bytes
        cls.max_headers = max_headers
        cls.refused = reporter.tally("head_too_large")

    def data_received(self, data: bytes) -> None:
        if self._too_large:
            return  # refused: what still comes is dropped until the connection closes
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still arriving and already too large: refuse now rather than buffer
        # it until it ends (an attacker need never end it).
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse()

    def on_headers_complete(self) -> None:
        if self._head_bytes > self.max_head_bytes or len(self.headers) > self.max_headers:
            size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
            too_many = len(self.headers) > self.max_headers
            if self._too_large or size > self.max_head_bytes or too_many:
                self._refuse()
                return  # no request cycle: the application never sees it
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    # The parser goes on through the rest of the data it was given; after a refusal
    # these callbacks have no request cycle to hand anything to.
    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        super().on_message_complete()
        self._in_head = True  # the next request's head may follow on this connection

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:  # after a 431, nothing more is sent
            super().send_400_response(msg)

    def _refuse(self) -> None:
        if self._too_large:
            return
        self._too_large = True
        self.refused.n += 1
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
