"""Every request passes the limiter before any other work (component 4).

The tier comes from the token (internal or external service, or a user) or, without
a valid one, from the client address. Failed authentications are counted per
address; past the limit, that address's tokens are not even looked up. Responses
carry the RateLimit and RateLimit-Policy fields of draft-ietf-httpapi-ratelimit-
headers; a refusal is a 429 problem with Retry-After.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from tragwerk.api.auth import SCOPE_KEY, authenticate
from tragwerk.api.middleware import EXTRA_HEADERS, header, send_problem
from tragwerk.api.services import Services
from tragwerk.domain.errors import Unauthenticated
from tragwerk.ratelimit.admission import Admission, Lane
from tragwerk.ratelimit.limiter import RequestLimiter, Verdict
from tragwerk.ratelimit.policy import Tier, route_cost


def _fields(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    policy = verdict.policy
    return [
        (b"ratelimit-policy", policy.header_policy_bytes),
        (
            b"ratelimit",
            b"%s;r=%d;t=%d" % (policy.header_name, verdict.remaining, verdict.reset_seconds),
        ),
    ]


async def _refuse(
    send: Send,
    status: int,
    code: str,
    detail: str,
    retry_after: int,
    extra: list[tuple[bytes, bytes]],
) -> None:
    title = "Too Many Requests" if status == 429 else "Service Unavailable"
    headers = [(b"retry-after", str(retry_after).encode()), *extra]
    await send_problem(send, status, code, title, detail, headers)


def lane_of(tier: Tier, method: str, cost: int) -> Lane:
    """Internal services first, people next, lists and anonymous traffic last."""
    if tier is Tier.INTERNAL:
        return Lane.CRITICAL
    if tier is Tier.ANONYMOUS or (method == "GET" and cost >= 5):
        return Lane.BULK
    return Lane.INTERACTIVE


class RateLimit:
    def __init__(
        self,
        app: ASGIApp,
        services: Services,
        limiter: RequestLimiter | None,
        admission: Admission | None,
    ) -> None:
        self.app = app
        self.services = services
        self.limiter = limiter
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cost = route_cost(scope["method"], scope["path"])
        if cost == 0:  # health, metrics and docs are never limited
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        if self.limiter is None:
            await self._admit(scope, receive, send, Tier.EXTERNAL, cost, [])
            return
        raw = header(scope, b"authorization")
        authorization = raw.decode("latin-1") if raw is not None else None
        tier, key = Tier.ANONYMOUS, client
        if authorization is not None:
            wait = self.limiter.auth_blocked(client)
            if wait:
                await _refuse(
                    send,
                    429,
                    "too-many-failed-authentications",
                    "too many failed authentications from this address",
                    wait,
                    [],
                )
                return
            try:
                who = await authenticate(self.services, authorization)
            except Unauthenticated:
                await self.limiter.auth_failed(client)  # the route answers 401
            else:
                tier = Tier.INTERNAL if who.internal else Tier.EXTERNAL
                key = str(who.token_id)  # the tier already says it is a token
                scope[SCOPE_KEY] = who  # the routes need not look the token up again
        verdict = self.limiter.check_local(tier, key, cost) or await self.limiter.check(
            tier, key, cost
        )
        fields = _fields(verdict)
        if not verdict.allowed:
            if verdict.unavailable:
                await _refuse(
                    send,
                    503,
                    "rate-limit-unavailable",
                    "the shared rate-limit store is unreachable and this tier fails closed",
                    verdict.reset_seconds,
                    fields,
                )
                return
            limit = verdict.policy.limit
            await _refuse(
                send,
                429,
                "rate-limited",
                f"the {verdict.policy.tier.value} limit of {limit.amount} per "
                f"{verdict.policy.window_seconds} s is spent; this request costs {cost}",
                verdict.reset_seconds,
                fields,
            )
            return

        await self._admit(scope, receive, send, tier, cost, fields)

    async def _admit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        tier: Tier,
        cost: int,
        fields: list[tuple[bytes, bytes]],
    ) -> None:
        if fields:
            scope[EXTRA_HEADERS] = fields  # RequestMetrics adds them to the response
        if self.admission is None:
            await self.app(scope, receive, send)
            return
        lane = lane_of(tier, scope["method"], cost)
        if not self.admission.try_enter(lane) and not await self.admission.enter(lane):
            await _refuse(
                send,
                503,
                "overloaded",
                f"the server is at capacity; {lane.name.lower()} requests are shed first",
                1,
                fields,
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave()
