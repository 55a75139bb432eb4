"""Bearer-token authentication and per-route permission checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from tragwerk.api.services import Services
from tragwerk.domain.directory import Permission, Principal
from tragwerk.domain.errors import Forbidden, Unauthenticated

MAX_TOKEN_LENGTH = 256


async def services(request: Request) -> Services:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, and the
    # hand-over cost ~10 % of the listing's throughput (docs/decisions/0002).
    svc: Services = request.app.state.services
    return svc


async def authenticate(svc: Services, header: str | None) -> Principal:
    """The principal of an Authorization header, or Unauthenticated saying why not.

    Shared by the dependency below and the reference fast path (fast_reference.py).
    """
    if header is None:
        raise Unauthenticated("send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("the token is invalid, revoked or expired")
    found = await svc.reads.principal(token)
    if found is None:
        raise Unauthenticated("the token is invalid, revoked or expired")
    return found


def authenticate_cached(svc: Services, header: bytes | None) -> Principal | None:
    """The principal of a well-formed header whose token is cached; None in every other
    case, and then `await authenticate(...)` looks the token up or says what is wrong.

    Synchronous: a request whose token is cached (nearly all of them) needs no
    coroutine for it. Used by the rate limiter and the reference fast path alike.
    """
    if header is None or not header.startswith((b"Bearer ", b"bearer ")):
        return None
    token = header[7:].strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return svc.reads.principal_cached(token.decode("latin-1"))


SCOPE_KEY = "tragwerk.principal"


async def principal(request: Request) -> Principal:
    # The rate limiter authenticated the request already when it could.
    known: Principal | None = request.scope.get(SCOPE_KEY)
    if known is not None:
        return known
    found = await authenticate(await services(request), request.headers.get("authorization"))
    request.scope[SCOPE_KEY] = found
    return found


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that authenticates and then checks one permission."""

    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.can(permission):
            raise Forbidden(f"this token lacks the '{permission.value}' permission")
        return who

    check.__name__ = f"require_{permission.name.lower()}"
    check.permission = permission  # type: ignore[attr-defined]  # read by tragwerk.api.openapi
    return check


Svc = Annotated[Services, Depends(services)]
