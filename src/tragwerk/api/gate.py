"""The one ASGI layer in front of the application: every request passes it.

In order: the client's address behind a trusted proxy (tragwerk.api.client_address);
a request id and the request metrics; the rate limit and admission check
(tragwerk.api.limiting); the body limits (413 and 415 before any handler runs); then
the app. One layer rather than four: each ASGI layer costs a coroutine and a wrapped
`send` per request, which on a cached read was a third of what rate limiting cost
(docs/decisions/0005).
"""

from __future__ import annotations

import itertools
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tragwerk.api.client_address import ClientAddress
from tragwerk.api.limiting import Limiting, Refusal
from tragwerk.api.middleware import METHODS_WITH_BODY, guard_body, header
from tragwerk.monitoring.logging import REQUEST_ID
from tragwerk.monitoring.metrics import HttpMetrics


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        metrics: HttpMetrics,
        limiting: Limiting | None,
        body_limit: int,
        client_address: ClientAddress | None = None,
    ) -> None:
        self.app = app
        self.client_address = client_address
        self.metrics = metrics
        self.limiting = limiting
        self.body_limit = body_limit
        # Request ids: a random per-process prefix and a counter. uuid4() reads
        # os.urandom per call, which was 19 % of a cached request's CPU (decisions/0004).
        self._prefix = os.urandom(5).hex()
        self._counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.client_address is not None:  # only when proxies are trusted
            self.client_address.resolve(scope)
        request_id = header(scope, b"x-request-id")
        if request_id is not None:
            request_id = request_id[:64]
        else:
            request_id = f"{self._prefix}{next(self._counter):012x}".encode()
        fields: list[tuple[bytes, bytes]] = []  # the limiter's RateLimit fields
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    *fields,
                    (b"x-request-id", request_id),
                ]
            await send(message)

        metrics = self.metrics
        metrics.in_flight += 1
        bound = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        limiting = self.limiting
        entered = False  # holds an admission place to give back
        try:
            if limiting is not None:
                decision = limiting.admit(scope, fields)
                if not isinstance(decision, bool):
                    if not isinstance(decision, Refusal):  # it has to wait: a coroutine
                        decision = await decision
                    if isinstance(decision, Refusal):
                        await decision.send(send_with_id)
                        return
                entered = decision
            if scope["method"] in METHODS_WITH_BODY:
                replay = await guard_body(receive, send_with_id, scope["headers"], self.body_limit)
                if replay is None:
                    return
                receive = replay
            await self.app(scope, receive, send_with_id)
        finally:
            if entered and limiting is not None:
                limiting.leave()
            REQUEST_ID.reset(bound)
            metrics.in_flight -= 1
            route = scope.get("route")
            metrics.finished(
                getattr(route, "path", None) or "unmatched",
                scope["method"],
                status,
                time.perf_counter() - start,
            )
