"""The fast path for the hottest reads: reference lists straight from the cache.

`GET /v1/roles`, `/v1/locations` and `/v1/countries` without a query string are
answered here, below FastAPI's routing and dependency machinery, which cost several
times more than the answer itself (docs/decisions/0004). The same checks run:
authentication through `auth.authenticate` and the route's permission. Anything but
the plain success case — a missing or bad token, a missing permission, any error —
is passed on to the normal route, which gives the usual problem response.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from tragwerk.api.auth import SCOPE_KEY, authenticate, authenticate_cached
from tragwerk.api.errors import DATABASE_UNAVAILABLE
from tragwerk.api.middleware import header, send_problem
from tragwerk.api.services import Services
from tragwerk.domain.directory import Permission
from tragwerk.domain.errors import DomainError
from tragwerk.store.database import database_unreachable

TABLES = {
    "/v1/roles": "roles",
    "/v1/locations": "locations",
    "/v1/countries": "countries",
}


class ReferenceFastPath:
    def __init__(self, app: ASGIApp, services: Services, routes: Mapping[str, object]) -> None:
        self.app = app
        self.services = services
        # The FastAPI routes these paths belong to, so metrics label them the same.
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        table = TABLES.get(path) if scope["type"] == "http" else None
        if table is None or scope["method"] != "GET" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        try:
            who = scope.get(SCOPE_KEY)  # the rate limiter authenticated it already
            if who is None:
                raw = header(scope, b"authorization")
                who = authenticate_cached(self.services, raw) or await authenticate(
                    self.services, raw.decode("latin-1") if raw else None
                )
            if not who.can(Permission.REFERENCE_READ):
                raise DomainError("forbidden")
            snapshot = await self.services.reads.reference(table)
        except DomainError:
            await self.app(scope, receive, send)  # the route explains the refusal
            return
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            await send_problem(
                send,
                503,
                "database-unavailable",
                "Service Unavailable",
                DATABASE_UNAVAILABLE,
                [(b"retry-after", b"1")],
            )
            return
        scope["route"] = self.routes.get(path)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(snapshot.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": snapshot.body})
