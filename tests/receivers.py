"""Real receivers on loopback that count what arrives: an SMTP server and an HTTP server.

Both run in their own threads, like a separate host would, so a test's event loop
blocking or a worker's retries do not distort what they see.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from tests.services import free_port


class SmtpSink:
    """aiosmtpd on a free loopback port; keeps every message it accepts."""

    def __init__(self, delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.messages: list[EmailMessage] = []
        self.delay = delay
        self.host = host
        self.port = free_port()
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname=host, port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.delay:
            await asyncio.sleep(self.delay)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    def message_ids(self) -> list[str]:
        with self._lock:
            return [str(m["Message-ID"]) for m in self.messages]

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


# (status, extra headers, seconds to sleep before answering)
Answer = tuple[int, dict[str, str], float]


@dataclass
class WebhookReceiver:
    """An HTTP server that records each POST and answers per `answer(n)` (n from 0)."""

    answer: Callable[[int], Answer] = lambda _n: (200, {}, 0.0)
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    port: int = 0  # 0: any free port; a fixed one lets a test bring a receiver "back up"
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    n = len(receiver.received)
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                    receiver.in_flight += 1
                status, headers, sleep = receiver.answer(n)
                try:
                    if sleep:
                        time.sleep(sleep)
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def event_ids(self) -> list[str]:
        with self._lock:
            return [r.headers["X-Tragwerk-Event-Id"] for r in self.received]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


async def eventually(check: Callable[[], Any], within: float = 20.0, every: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {within} s (last value {last!r})")
