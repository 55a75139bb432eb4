"""Who is limited how much: tiers, their limits, and what a route costs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from limits import RateLimitItem, parse

from tragwerk.domain.rates import rate_problem


class Tier(StrEnum):
    ANONYMOUS = "anonymous"  # no valid token: keyed by client IP
    EXTERNAL = "external"  # users and external service clients: keyed by token
    INTERNAL = "internal"  # service clients marked internal: keyed by token


class FailMode(StrEnum):
    """What a tier gets while the shared store (Redis) is unreachable."""

    OPEN = "open"  # allowed, not counted
    LOCAL = "local"  # counted in this process's memory instead
    CLOSED = "closed"  # refused with 503


@dataclass(frozen=True)
class TierPolicy:  # frozen, yet cached_property works: it writes __dict__ directly
    tier: Tier
    limit: RateLimitItem
    fail_mode: FailMode

    @property
    def window_seconds(self) -> int:
        return int(self.limit.get_expiry())

    @property
    def header_policy(self) -> str:
        """The RateLimit-Policy field value (draft-ietf-httpapi-ratelimit-headers)."""
        return f'"{self.tier.value}";q={self.limit.amount};w={self.window_seconds}'

    @cached_property
    def policy_field(self) -> tuple[bytes, bytes]:
        """The whole RateLimit-Policy header field, built once per policy."""
        return (b"ratelimit-policy", self.header_policy.encode())

    @cached_property
    def header_template(self) -> bytes:
        """The RateLimit field value with its two numbers left to fill in (`% (r, t)`)."""
        return f'"{self.tier.value}";r=%d;t=%d'.encode()


DEFAULT_LIMITS: Mapping[Tier, str] = {
    Tier.ANONYMOUS: "120/minute",
    Tier.EXTERNAL: "1200/minute",
    Tier.INTERNAL: "12000/minute",
}
DEFAULT_FAIL_MODES: Mapping[Tier, FailMode] = {
    Tier.ANONYMOUS: FailMode.LOCAL,
    Tier.EXTERNAL: FailMode.LOCAL,
    Tier.INTERNAL: FailMode.OPEN,
}
DEFAULT_AUTH_FAILURES = "30/minute"


def parse_limit(text: str) -> RateLimitItem:
    """'1200/minute', '20/second', '100 per 10 minutes': one positive rate
    (tragwerk.domain.rates), read by the limits library."""
    problem = rate_problem(text)
    if problem is not None:
        raise ValueError(problem)
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate limit like '1200/minute'") from None


# Cost per request, by what it makes the server do. Cached reads are cheapest; list
# queries and writes touch the database most.
CACHED_READS = frozenset({"/v1/roles", "/v1/locations", "/v1/countries"})
LISTS = frozenset({"/v1/cases", "/v1/users", "/v1/notifications"})
EXEMPT_PREFIXES = ("/health/", "/metrics", "/docs", "/openapi.json", "/redoc")


def route_cost(method: str, path: str) -> int:
    """0 for exempt paths (health, metrics, docs), else 1 to 5."""
    if method == "GET":  # the fixed paths most requests go to: one look-up
        cost = _FIXED_GET_COSTS.get(path)
        if cost is not None:
            return cost
    if path.startswith(EXEMPT_PREFIXES):
        return 0
    if method in ("GET", "HEAD"):
        if path in CACHED_READS or path.startswith(("/v1/countries/", "/v1/locations/")):
            return 1
        if path in LISTS or path.endswith("/history"):
            return 5
        return 2
    return 5


_FIXED_GET_COSTS = {
    path: route_cost("HEAD", path)
    for path in (*CACHED_READS, *LISTS, "/health/live", "/health/ready", "/metrics")
}
