"""Every request passes the limiter before any other work (component 4).

The tier comes from the token (internal or external service, or a user) or, without
a valid one, from the client address. Failed authentications are counted per
address; past the limit, that address's tokens are not even looked up. Responses
carry the RateLimit and RateLimit-Policy fields of draft-ietf-httpapi-ratelimit-
headers; a refusal is a 429 problem with Retry-After.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope, Send

from tragwerk.api.auth import SCOPE_KEY, authenticate, authenticate_cached
from tragwerk.api.errors import DATABASE_UNAVAILABLE
from tragwerk.api.middleware import header, send_problem
from tragwerk.api.services import Services
from tragwerk.domain.directory import Principal
from tragwerk.domain.errors import Unauthenticated
from tragwerk.ratelimit.admission import Admission, Lane
from tragwerk.ratelimit.budget import Decision
from tragwerk.ratelimit.limiter import RequestLimiter
from tragwerk.ratelimit.policy import Tier, TierPolicy, route_cost
from tragwerk.store.database import database_unreachable


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request turned away before any route runs: a 429 or 503 problem."""

    status: int
    code: str
    detail: str
    retry_after: int

    async def send(self, send: Send) -> None:
        title = "Too Many Requests" if self.status == 429 else "Service Unavailable"
        headers = [(b"retry-after", str(self.retry_after).encode())]
        await send_problem(send, self.status, self.code, title, self.detail, headers)


def _refusal(policy: TierPolicy, decision: Decision, cost: int) -> Refusal:
    if decision.unavailable:
        return Refusal(
            503,
            "rate-limit-unavailable",
            "the shared rate-limit store is unreachable and this tier fails closed",
            decision.reset_seconds,
        )
    return Refusal(
        429,
        "rate-limited",
        f"the {policy.tier.value} limit of {policy.limit.amount} per "
        f"{policy.window_seconds} s is spent; this request costs {cost}",
        decision.reset_seconds,
    )


# Enum members as module constants: `Tier.INTERNAL` is a class attribute look-up through
# the enum's metaclass, several times slower than a global, and this runs per request.
_ANONYMOUS, _EXTERNAL, _INTERNAL = Tier.ANONYMOUS, Tier.EXTERNAL, Tier.INTERNAL
_CRITICAL, _INTERACTIVE, _BULK = Lane.CRITICAL, Lane.INTERACTIVE, Lane.BULK
_NO_CLIENT = ("unknown", 0)


Admitted = bool | Refusal  # True: holds an admission place; False: goes on without one
Deciding = Admitted | Coroutine[Any, Any, Admitted]  # decided now, or once awaited


class Limiting:
    """The rate-limit and admission check of every request, called by the API's gate.

    `admit()` is synchronous and decides the usual request (a cached token, budget
    reserved in this instance, a free place) without a coroutine; only where it has
    to wait (a token to look up, a batch to reserve from the store, a queue for a
    place) does it return a coroutine for the gate to await. Each coroutine or ASGI
    layer costs per request, and this runs on every one (decisions/0005).
    """

    def __init__(
        self,
        services: Services,
        limiter: RequestLimiter | None,
        admission: Admission | None,
    ) -> None:
        self.services = services
        self.limiter = limiter
        self.admission = admission
        # Give back the place admit() took: the admission's own method, not a wrapper.
        self.leave: Callable[[], None] = admission.leave if admission else _nothing

    def admit(self, scope: Scope, fields: list[tuple[bytes, bytes]]) -> Deciding:
        """True if the request took an admission place (give it back with `leave()`),
        False if it goes on without one, a Refusal to send, or a coroutine that
        decides one of these. The RateLimit fields for the response go to `fields`.
        """
        method = scope["method"]
        cost = route_cost(method, scope["path"])
        if cost == 0:  # health, metrics and docs are never limited nor shed
            return False
        limiter = self.limiter
        if limiter is None:
            return self._place(_EXTERNAL, method, cost)
        raw = header(scope, b"authorization")
        if raw is None:
            tier, key = _ANONYMOUS, "ip:" + _client(scope)
        else:
            who = authenticate_cached(self.services, raw)
            if who is None:  # not cached (or not valid): look it up, then go on
                # Unless this address is blocked for failed authentications: then no
                # token is looked up, so none can be guessed. A token already known to
                # be valid (cached, above) is still served: the throttle stops the
                # failing attempts, not the address's users (behind one proxy: all).
                if limiter.blocked:
                    wait = limiter.auth_blocked(_client(scope))
                    if wait:
                        return Refusal(
                            429,
                            "too-many-failed-authentications",
                            "too many failed authentications from this address",
                            wait,
                        )
                return self._admit_after_lookup(scope, fields, limiter, raw, cost)
            scope[SCOPE_KEY] = who  # the routes need not look the token up again
            tier, key = (_INTERNAL if who.internal else _EXTERNAL), who.key
        policy = limiter.policies[tier]
        decision = limiter.check_local(policy, key, cost)
        if decision is None:  # no budget reserved here: reserve a batch, then go on
            return self._admit_after_check(method, fields, limiter, tier, policy, key, cost)
        return self._conclude(method, fields, tier, policy, decision, cost)

    def _conclude(
        self,
        method: str,
        fields: list[tuple[bytes, bytes]],
        tier: Tier,
        policy: TierPolicy,
        decision: Decision,
        cost: int,
    ) -> Deciding:
        fields.append(policy.policy_field)
        fields.append(
            (b"ratelimit", policy.header_template % (decision.remaining, decision.reset_seconds))
        )
        if not decision.allowed:
            return _refusal(policy, decision, cost)
        return self._place(tier, method, cost)

    def _place(self, tier: Tier, method: str, cost: int) -> Deciding:
        """An admission place in the request's lane: internal services first, people
        next, lists and anonymous traffic last. The lane is worked out here rather than
        in a helper: a call per request showed in instruction counts."""
        admission = self.admission
        if admission is None:
            return False
        if tier is _INTERNAL:
            lane = _CRITICAL
        elif tier is _ANONYMOUS or (cost >= 5 and method == "GET"):
            lane = _BULK
        else:
            lane = _INTERACTIVE
        if admission.try_enter(lane):  # a free place and nobody waiting
            return True
        return self._queue(admission, lane)

    async def _queue(self, admission: Admission, lane: Lane) -> Admitted:
        if await admission.enter(lane):
            return True
        return Refusal(
            503,
            "overloaded",
            f"the server is at capacity; {lane.name.lower()} requests are shed first",
            1,
        )

    async def _admit_after_lookup(
        self,
        scope: Scope,
        fields: list[tuple[bytes, bytes]],
        limiter: RequestLimiter,
        raw: bytes,
        cost: int,
    ) -> Admitted:
        client = _client(scope)
        tier, key = _ANONYMOUS, "ip:" + client
        try:
            who = await authenticate(self.services, raw.decode("latin-1"))
        except Unauthenticated:
            await limiter.auth_failed(client)  # the route answers 401
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            return Refusal(503, "database-unavailable", DATABASE_UNAVAILABLE, 1)
        else:
            tier, key = _identified(scope, who)
        policy = limiter.policies[tier]
        decision = limiter.check_local(policy, key, cost) or await limiter.check(policy, key, cost)
        return await _settled(self._conclude(scope["method"], fields, tier, policy, decision, cost))

    async def _admit_after_check(
        self,
        method: str,
        fields: list[tuple[bytes, bytes]],
        limiter: RequestLimiter,
        tier: Tier,
        policy: TierPolicy,
        key: str,
        cost: int,
    ) -> Admitted:
        decision = await limiter.check(policy, key, cost)
        return await _settled(self._conclude(method, fields, tier, policy, decision, cost))


def _client(scope: Scope) -> str:
    """The client's address: read only where it is needed (anonymous requests, failed
    or blocked authentication), not for the usual request with a cached token."""
    return str((scope.get("client") or _NO_CLIENT)[0])


def _nothing() -> None:
    return None


def _identified(scope: Scope, who: Principal) -> tuple[Tier, str]:
    """The tier and budget key of an authenticated request; the principal is kept in
    the scope so that the routes need not look the token up again."""
    scope[SCOPE_KEY] = who
    return (_INTERNAL if who.internal else _EXTERNAL), who.key


async def _settled(outcome: Deciding) -> Admitted:
    if isinstance(outcome, bool | Refusal):
        return outcome
    return await outcome
