"""The request limiter: tier policies over a budget, with a fallback when Redis fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from limits import RateLimitItem

from tragwerk.domain.observability import ModuleReporter, Tally
from tragwerk.ratelimit.budget import Budget, Decision, MemoryBudget
from tragwerk.ratelimit.policy import FailMode, Tier, TierPolicy, parse_limit

log = logging.getLogger(__name__)

# After the shared store fails, use the fallback this long before trying it again.
RETRY_SHARED_AFTER_SECONDS = 2.0


_ALLOWED = {tier: f"allowed:{tier.value}" for tier in Tier}
_LIMITED = {tier: f"limited:{tier.value}" for tier in Tier}


@dataclass
class RequestLimiter:
    policies: Mapping[Tier, TierPolicy]
    budget: Budget
    reporter: ModuleReporter
    auth_failures: RateLimitItem
    shared: bool = False  # budget is the Redis one; failures fall back per tier
    clock: Callable[[], float] = time.monotonic
    _fallback: MemoryBudget = field(default_factory=MemoryBudget)
    _shared_down_until: float = 0.0
    store_healthy: bool = True
    defaults: Mapping[Tier, TierPolicy] = field(default_factory=dict)
    blocked: dict[str, float] = field(default_factory=dict)  # address -> blocked until
    _allowed: dict[Tier, Tally] = field(default_factory=dict)  # counted on every request

    def __post_init__(self) -> None:
        self.defaults = dict(self.defaults or self.policies)
        self._allowed = {tier: self.reporter.tally(_ALLOWED[tier]) for tier in Tier}

    def apply_overrides(self, overrides: Mapping[Tier, tuple[str, str]]) -> None:
        """Limits changed at run time: (rate, fail mode) per tier over the defaults."""
        policies = dict(self.defaults)
        for tier, (rate, fail_mode) in overrides.items():
            try:
                policies[tier] = TierPolicy(tier, parse_limit(rate), FailMode(fail_mode))
            except ValueError:
                log.error("ignoring unusable limit override %s=%r (%s)", tier, rate, fail_mode)
        self.policies = policies  # one assignment: a request sees old or new, never a mix
        self.reporter.count("policies_applied")

    def check_local(self, policy: TierPolicy, key: str, cost: int) -> Decision | None:
        """The decision from this instance's reservation, or None: then `await check()`.

        `policy` is `policies[tier]` as the caller read it, so that the response
        fields name the policy the decision was made under.
        """
        if self._shared_down_until and self.clock() < self._shared_down_until:
            return None  # the fallback decides, in check()
        decision = self.budget.take_local(policy.limit, key, cost)
        if decision is not None:
            if decision.allowed:
                self._allowed[policy.tier].n += 1
            else:
                self.reporter.count(_LIMITED[policy.tier])
        return decision

    async def check(self, policy: TierPolicy, key: str, cost: int) -> Decision:
        tier = policy.tier
        # Timed: this is the path that may wait for the store (check_local is not).
        with self.reporter.operation("check"):
            decision = await self._take(policy, key, cost)
        if decision is None:  # shared store down and the tier fails closed
            self.reporter.count(f"unavailable:{tier.value}")
            return Decision(False, 0, int(RETRY_SHARED_AFTER_SECONDS), unavailable=True)
        if decision.allowed:
            self._allowed[tier].n += 1
        else:
            self.reporter.count(_LIMITED[tier])
        return decision

    async def _take(self, policy: TierPolicy, key: str, cost: int) -> Decision | None:
        if not self.shared or self.clock() >= self._shared_down_until:
            try:
                decision = await self.budget.take(policy.limit, key, cost)
            except Exception as exc:
                if not self.shared:
                    raise
                self.store_failed(exc)
            else:
                if not self.store_healthy:
                    log.warning("rate-limit store reachable again")
                    self.store_healthy = True
                    self.reporter.set_healthy(True)
                return decision
        if policy.fail_mode is FailMode.OPEN:
            return Decision(True, policy.limit.amount, policy.window_seconds)
        if policy.fail_mode is FailMode.LOCAL:
            return await self._fallback.take(policy.limit, key, cost)
        return None

    async def close(self) -> None:
        await self.budget.close()

    def store_failed(self, exc: Exception) -> None:
        """The shared store failed (here, or in a background reservation): fall back
        per tier for a while, and say so once."""
        self._shared_down_until = self.clock() + RETRY_SHARED_AFTER_SECONDS
        self.reporter.count("store_failure")
        if self.store_healthy:
            log.error("rate-limit store unreachable, falling back per tier: %r", exc)
            self.store_healthy = False
            self.reporter.set_healthy(False)

    async def auth_failed(self, client: str) -> None:
        """Count a failed authentication from `client` (an IP); block it past the limit."""
        decision = await self._fallback.take(self.auth_failures, f"authfail:{client}", 1)
        self.reporter.count("auth_failure")
        if not decision.allowed or decision.remaining <= 0:  # that was the last one allowed
            self.blocked[client] = self.clock() + decision.reset_seconds

    def auth_blocked(self, client: str) -> int:
        """Seconds until `client` may try a token again; 0 when it may now.

        A dict look-up: this runs on every request that carries a token.
        """
        until = self.blocked.get(client)
        if until is None:
            return 0
        left = until - self.clock()
        if left <= 0:
            del self.blocked[client]
            return 0
        return max(1, int(left + 0.999))
